"""A billing account's row held by another transaction for many seconds (a slow migration, an operator's
open psql session): accepted operations on it wait, retried with backoff and never failed, while other
accounts' operations flow; every operation is applied once when the lock goes."""
import time

import pytest

from tests.processes import (account_locked, assert_applied_once, assert_audit_passes, statuses,
                             wait_for_operations, wait_until)

HELD_SECONDS = 12


def _accept(api, path: str, body: dict) -> str:
    result = api.operator("POST", path, json=body)
    assert result.status_code == 202, result.text
    return result.json["id"]


@pytest.mark.rabbitmq  # the retries' countdowns wait in RabbitMQ's delay queues there
def test_operations_on_a_locked_account_wait_and_retry_while_other_accounts_flow(stack, api, engine):
    stack.start(api=True, concurrency=2)
    owner, other = stack.api.new_user(), stack.api.new_user("Grace")
    hot, cool = stack.api.new_workspace(owner, "Hot"), stack.api.new_workspace(other, "Cool")
    base = f"/workspaces/{hot['id']}/billing"
    with account_locked(engine, hot["defaultBillingAccountId"]):
        started = time.monotonic()
        waiting = [_accept(stack.api, f"{base}/credits", {"amountCents": 300}),
                   _accept(stack.api, f"{base}/usage", {"events": [
                       {"eventId": "held-1", "metric": "api.calls", "quantity": 1, "amountCents": 200}]}),
                   _accept(stack.api, f"{base}/credits", {"amountCents": 400})]
        time.sleep(1)
        flowing = [_accept(stack.api, f"/workspaces/{cool['id']}/billing/credits", {"amountCents": 500})
                   for _ in range(3)]
        assert wait_for_operations(engine, flowing, timeout=10) == {i: "succeeded" for i in flowing}
        other_done = time.monotonic() - started

        def all_retrying():
            ops = [stack.api.operator("GET", f"/operations/{i}").json for i in waiting]
            return all(op["attempts"] >= 2 and op["lastError"] for op in ops) and ops
        ops = wait_until(all_retrying, HELD_SECONDS, "each waiting operation to show a retried attempt")
        assert {op["status"] for op in ops} <= {"queued", "running"}
        assert all("locked by another transaction" in op["lastError"]["detail"] for op in ops), ops
        assert all(op["error"] is None for op in ops)
        time.sleep(max(0.0, HELD_SECONDS - (time.monotonic() - started)))

    assert wait_for_operations(engine, waiting, timeout=60) == {i: "succeeded" for i in waiting}
    assert other_done < 8, f"another account's credits waited {other_done:.1f} s behind the locked one"
    assert_applied_once(engine, [waiting[0], waiting[2], *flowing])
    balance = stack.api.call("GET", f"{base}/balance", owner.key).json["balanceCents"]
    assert balance == 1000 + 300 - 200 + 400
    done = [stack.api.operator("GET", f"/operations/{i}").json for i in waiting]
    assert all(op["lastError"] is None and op["nextAttemptAt"] is None for op in done), done
    assert statuses(engine, waiting) == {i: "succeeded" for i in waiting}
    assert_audit_passes(stack)
