"""Credits through the served API and a real Celery worker, on Redis and on RabbitMQ: accepted, applied once,
readable."""
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from domain.models import OPERATOR_CALLER
from tests.processes import assert_sound, entries_per_operation, wait_for_operations, wait_until

pytestmark = pytest.mark.rabbitmq


def _workspace(api):
    owner = api.new_user()
    return owner, api.new_workspace(owner)


def _operation(api, location: str) -> dict:
    return api.operator("GET", location).json


def test_a_credit_is_accepted_then_applied_by_the_worker(stack, services):
    api = stack.api
    owner, workspace = _workspace(api)
    posted = api.operator("POST", f"/workspaces/{workspace['id']}/billing/credits",
                          json={"amountCents": 2500, "description": "Goodwill"})
    assert posted.status_code == 202, posted.text
    location = posted.headers["Location"]
    assert location == f"/operations/{posted.json['id']}" and posted.json["status"] == "queued"

    done = wait_until(lambda: (lambda op: op if op["status"] in ("succeeded", "failed") else None)(
        _operation(api, location)), 30, "the worker to apply the credit")
    account_id = workspace["defaultBillingAccountId"]
    assert done["status"] == "succeeded", done
    assert done["result"]["billingAccountId"] == account_id
    assert (done["result"]["amountCents"], done["result"]["balanceAfterCents"]) == (2500, 3500)
    balance = api.call("GET", f"/workspaces/{workspace['id']}/billing/balance", owner.key).json
    assert balance["balanceCents"] == 3500
    newest = api.call("GET", f"/billing-accounts/{account_id}/transactions", owner.key).json["data"][0]
    assert newest["id"] == done["result"]["transactionId"]
    assert (newest["kind"], newest["amountCents"], newest["balanceAfterCents"], newest["description"]) == (
        "credit_grant", 2500, 3500, "Goodwill")
    assert_sound(services, account_id, posted.json["id"])


def test_twenty_concurrent_posts_with_one_idempotency_key_credit_once(stack, services, engine):
    api = stack.api
    owner, workspace = _workspace(api)
    key = f"grant-{uuid.uuid4()}"

    def post(_):
        return api.operator("POST", f"/workspaces/{workspace['id']}/billing/credits",
                            json={"amountCents": 700}, headers={"Idempotency-Key": key})
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(post, range(20)))

    assert {a.status_code for a in answers} <= {202, 409}, [a.text for a in answers]
    accepted = [a for a in answers if a.status_code == 202]
    assert accepted and {a.headers["Location"] for a in accepted} == {accepted[0].headers["Location"]}
    assert {a.text for a in accepted} == {accepted[0].text}  # the replays' stored answer is the first, to the byte
    operation_id = accepted[0].json["id"]
    assert wait_for_operations(engine, [operation_id]) == {operation_id: "succeeded"}
    assert entries_per_operation(engine, [operation_id]) == {operation_id: 1}
    again = post(None)  # once settled, the key replays the first answer
    assert (again.status_code, again.headers["Location"], again.text) == (202, accepted[0].headers["Location"],
                                                                          accepted[0].text)
    balance = api.call("GET", f"/workspaces/{workspace['id']}/billing/balance", owner.key).json
    assert balance["balanceCents"] == 1700
    assert_sound(services, workspace["defaultBillingAccountId"], operation_id)


def test_an_operation_delivered_three_times_is_applied_once(stack, services, queue, engine):
    api = stack.api
    owner, workspace = _workspace(api)
    queue.up = False  # recorded in Postgres, never sent: the test delivers it by hand
    op = services.operations.request_credit(OPERATOR_CALLER, workspace["id"], 300, "twice")

    stack.send_task("ledger.apply_operation", operation_id=op.id)
    stack.send_task("ledger.apply_operation", operation_id=op.id)  # two workers may run these at once
    assert wait_for_operations(engine, [op.id]) == {op.id: "succeeded"}
    attempts = services.operations.get(OPERATOR_CALLER, op.id).attempts
    late = stack.send_task("ledger.apply_operation", operation_id=op.id)  # a redelivery after success
    stack.worker.wait_for_output(f"[{late}] succeeded", timeout=15)

    assert entries_per_operation(engine, [op.id]) == {op.id: 1}
    assert services.operations.get(OPERATOR_CALLER, op.id).attempts == attempts
    balance = api.call("GET", f"/workspaces/{workspace['id']}/billing/balance", owner.key).json
    assert balance["balanceCents"] == 1300
    assert_sound(services, workspace["defaultBillingAccountId"], op.id)
