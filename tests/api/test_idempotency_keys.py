"""Idempotency-Key on POST: the first answer is replayed; another body under the same key is a conflict."""
import orjson
import pytest

from domain.names import Task
from tests.api.checks import assert_problem, row_counts


@pytest.fixture
def workspace(api):
    owner = api.new_user()
    return owner, api.new_workspace(owner)


def credit(api, ws: dict, amount: int, key: str | None, **extra):
    headers = {"Idempotency-Key": key} if key is not None else {}
    return api.operator("POST", f"/workspaces/{ws['id']}/billing/credits", json={"amountCents": amount, **extra},
                        headers=headers)


def queued(queue) -> list[dict]:
    return [kwargs for name, kwargs in queue.sent if name == Task.APPLY_OPERATION]


def balance(api, owner, ws) -> int:
    return api.call("GET", f"/workspaces/{ws['id']}/billing/balance", owner.key).json["balanceCents"]


def test_a_credit_is_only_queued_and_applying_it_twice_moves_the_balance_once(api, services, queue, workspace):
    owner, ws = workspace
    result = credit(api, ws, 250, None)
    assert result.status_code == 202, result.text
    op = result.json
    assert op["kind"] == "credit" and op["status"] == "queued" and op["result"] is None
    assert result.headers["location"] == f"/operations/{op['id']}"
    assert queued(queue) == [{"operation_id": op["id"]}]
    assert balance(api, owner, ws) == 1000
    services.operations.apply(op["id"])
    services.operations.apply(op["id"])
    assert balance(api, owner, ws) == 1250
    done = api.operator("GET", f"/operations/{op['id']}").json
    assert done["status"] == "succeeded" and done["result"]["balanceAfterCents"] == 1250
    kinds = [t["kind"] for t in api.call("GET", f"/workspaces/{ws['id']}/billing/transactions", owner.key).json["data"]]
    assert kinds == ["credit_grant", "intro_credit"]


def test_a_credit_retried_with_the_same_key_and_body_replays_the_first_answer_and_queues_once(
        api, services, queue, engine, workspace):
    owner, ws = workspace
    before = row_counts(engine)["operations"]
    first = credit(api, ws, 300, "grant-1")
    again = credit(api, ws, 300, "grant-1")
    assert first.status_code == again.status_code == 202
    assert again.text == first.text
    assert first.text == orjson.dumps(first.json).decode()  # rendered as every other answer (compact)
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["idempotent-replayed"] == "true"
    assert row_counts(engine)["operations"] == before + 1
    assert queued(queue) == [{"operation_id": first.json["id"]}]
    services.operations.apply(first.json["id"])
    assert credit(api, ws, 300, "grant-1").text == first.text
    assert balance(api, owner, ws) == 1300


def test_a_credit_with_a_used_key_and_another_body_is_a_conflict(api, queue, engine, workspace):
    _, ws = workspace
    first = credit(api, ws, 300, "grant-2")
    before = row_counts(engine)
    assert_problem(credit(api, ws, 301, "grant-2"), 409)
    assert_problem(credit(api, ws, 300, "grant-2", description="other"), 409)
    assert row_counts(engine) == before
    assert queued(queue) == [{"operation_id": first.json["id"]}]


def test_an_idempotency_key_longer_than_255_characters_is_unprocessable(api, queue, engine, workspace):
    owner, ws = workspace
    before = row_counts(engine)
    body = assert_problem(credit(api, ws, 300, "k" * 256), 422)
    assert [e["field"] for e in body["errors"]] == ["Idempotency-Key"]
    assert_problem(api.call("POST", "/workspaces", owner.key, json={"name": "W"},
                            headers={"Idempotency-Key": "k" * 256}), 422)
    assert row_counts(engine) == before and queued(queue) == []
    assert credit(api, ws, 300, "k" * 255).status_code == 202


def test_creating_a_workspace_twice_with_one_key_creates_one_and_replays_it(api, engine, workspace):
    owner, _ = workspace
    before = row_counts(engine)["workspaces"]
    headers = {"Idempotency-Key": "ws-create-1"}
    first = api.call("POST", "/workspaces", owner.key, json={"name": "Replayed"}, headers=headers)
    again = api.call("POST", "/workspaces", owner.key, json={"name": "Replayed"}, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.text == first.text and again.json["id"] == first.json["id"]
    assert again.headers["location"] == f"/workspaces/{first.json['id']}"
    assert row_counts(engine)["workspaces"] == before + 1
    assert [w["name"] for w in api.call("GET", "/workspaces", owner.key).json["data"]].count("Replayed") == 1


def test_creating_a_workspace_with_a_used_key_and_another_body_is_a_conflict(api, engine, workspace):
    owner, _ = workspace
    headers = {"Idempotency-Key": "ws-create-2"}
    api.call("POST", "/workspaces", owner.key, json={"name": "One"}, headers=headers)
    before = row_counts(engine)
    assert_problem(api.call("POST", "/workspaces", owner.key, json={"name": "Two"}, headers=headers), 409)
    assert row_counts(engine) == before


def test_the_same_key_from_two_callers_names_two_requests(api, engine):
    alice, bob = api.new_user("Alice"), api.new_user("Bob")
    headers = {"Idempotency-Key": "shared"}
    mine = api.call("POST", "/workspaces", alice.key, json={"name": "Same"}, headers=headers)
    theirs = api.call("POST", "/workspaces", bob.key, json={"name": "Same"}, headers=headers)
    assert mine.status_code == theirs.status_code == 201
    assert mine.json["ownerUserId"] == alice.id and theirs.json["ownerUserId"] == bob.id


def test_a_refused_request_is_replayed_as_refused(api, workspace):
    owner, _ = workspace
    stranger = api.new_user("Eve")
    headers = {"Idempotency-Key": "refused"}
    body = {"name": "Theirs", "billingAccountId": stranger.default_account_id}
    first = api.call("POST", "/workspaces", owner.key, json=body, headers=headers)
    again = api.call("POST", "/workspaces", owner.key, json=body, headers=headers)
    assert_problem(first, 404)
    assert again.status_code == 404 and again.text == first.text
    assert again.headers["content-type"] == "application/problem+json"
