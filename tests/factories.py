"""Builders for tests: users, workspaces and calls with the right keys."""
import uuid
from dataclasses import dataclass

from falcon import testing

OPERATOR_TOKEN = "test-operator-token"


@dataclass
class UserKey:
    id: str
    key: str
    default_account_id: str
    email: str


class Api:
    """The Falcon test client with helpers for authenticated calls."""

    def __init__(self, client: testing.TestClient) -> None:
        self.client = client

    def call(self, method: str, path: str, key: str | None = None, *, json=None, body=None,
             headers: dict | None = None, params: dict | None = None) -> testing.Result:
        headers = dict(headers or {})
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return self.client.simulate_request(method, path, json=json, body=body, headers=headers,
                                            params=params)

    def operator(self, method: str, path: str, **kwargs) -> testing.Result:
        return self.call(method, path, OPERATOR_TOKEN, **kwargs)

    def new_user(self, name: str = "Ada") -> UserKey:
        email = f"{name.lower()}-{uuid.uuid4().hex[:10]}@example.com"
        result = self.operator("POST", "/users", json={"email": email, "name": name})
        assert result.status_code == 201, result.text
        body = result.json
        return UserKey(body["id"], body["apiKey"], body["defaultBillingAccountId"], email)

    def new_workspace(self, owner: UserKey, name: str = "Acme", **extra) -> dict:
        result = self.call("POST", "/workspaces", owner.key, json={"name": name, **extra})
        assert result.status_code == 201, result.text
        return result.json

    def add_member(self, owner: UserKey, workspace_id: str, member: UserKey, role: str = "member") -> None:
        result = self.call("POST", f"/workspaces/{workspace_id}/members", owner.key,
                           json={"userId": member.id, "role": role})
        assert result.status_code == 201, result.text
