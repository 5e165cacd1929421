"""Builders for tests: users, workspaces and calls with the right keys."""
import re
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


def new_linked_account(api: Api, owner: UserKey, workspace_id: str, name: str = "Project") -> dict:
    """Create a billing account through a workspace (owned by the caller, linked, balance 0)."""
    result = api.call("POST", f"/workspaces/{workspace_id}/billing/accounts", owner.key, json={"name": name})
    assert result.status_code == 201, result.text
    return result.json


def post(services, account_id: str, amount_cents: int, *, key: str | None = None, kind: str | None = None,
         allow_negative: bool = False, terms=None):
    """One ledger posting in its own transaction, with its grant (a credit, credit_grant by default: an operator's
    promotional grant) or drawn from the grants (a debit, usage by default)."""
    from domain.grants import Terms
    from domain.services import grants

    key, kind = key or f"test:{uuid.uuid4().hex}", kind or ("credit_grant" if amount_cents > 0 else "usage")
    with services.ctx.uow() as uow:
        if amount_cents > 0:
            posting = grants.credit(uow.conn, account_id, amount_cents, terms or Terms("operator"), kind=kind, key=key)
        else:
            posting = grants.debit(uow.conn, account_id, amount_cents, kind=kind, key=key, allow_negative=allow_negative)
        uow.commit()
    return posting


def prometheus_samples(text: str) -> dict[str, float]:
    """Prometheus exposition text as {'name{a="x",b="y"}': value}, labels sorted whatever the exporter's order."""
    found = {}
    for line in text.splitlines():
        match = re.match(r"^([a-z_]+)(?:\{(.*)\})? ([0-9.e+-]+)$", line)
        if match:
            labels = ",".join(sorted(re.findall(r'[a-z_]+="(?:[^"\\]|\\.)*"', match.group(2) or "")))
            found[match.group(1) + (f"{{{labels}}}" if labels else "")] = float(match.group(3))
    return found
