"""RabbitMQ killed (SIGKILL, as in a crash) and started again in the middle of a burst of credits and usage
charges: what it confirmed before the crash is still queued after it, the same worker reconnects by itself,
the relay sends what it refused meanwhile, and every operation is applied exactly once.

The hot account's row stays locked until the broker is back, so its charges pile up in the ledger queue
(quorum: on disk before RabbitMQ confirms them) instead of being applied before the crash. A charge is applied
by its own message alone (credits are applied in batches by any wake-up), so every charge answered before
the crash being applied before the relay runs shows that its message survived.
"""
import json
import time
import uuid

import pytest

from tests.processes import (WAIT_ON_LOCKS, Load, account_locked, age_operations, assert_applied_once,
                             assert_audit_passes, statuses, wait_for_operations, wait_until)

pytestmark = pytest.mark.rabbitmq(only=True)

MAX_REQUEST_SECONDS = 5.0  # one send attempt (a refused connection, or the confirm timeout) plus slack
QUEUED_AT_THE_CRASH = 5  # messages waiting in the ledger queue, never handed to the worker, when it dies


def _requests_whose_send_failed(stack) -> set[str]:
    """Request ids of the API's log lines saying a send failed (worker.queue.enqueue): the relay's job."""
    [server] = [p for p in stack.processes if p.name == "api"]
    lines = (json.loads(line) for line in server.output().splitlines() if line.startswith("{"))
    return {line["request_id"] for line in lines if line.get("logger") == "worker.queue"}


def test_rabbitmq_killed_mid_burst_keeps_what_it_confirmed_and_nothing_is_lost_or_applied_twice(stack, api,
                                                                                                engine):
    stack.env.update(WAIT_ON_LOCKS)
    stack.start(concurrency=2)
    owners = [api.new_user() for _ in range(3)]
    workspaces = [api.new_workspace(owner) for owner in owners]
    hot = workspaces[0]
    worker_pids = sorted(stack.worker.group())

    def post(n: int):
        """Even n: a 1-cent usage charge on the hot workspace; odd n: a credit to one of the other two."""
        if n % 2 == 0:
            return stack.api.operator("POST", f"/workspaces/{hot['id']}/billing/usage", json={"events": [
                {"eventId": f"burst-{n}", "metric": "api.calls", "quantity": 1, "amountCents": 1}]})
        return stack.api.operator("POST", f"/workspaces/{workspaces[1 + n // 2 % 2]['id']}/billing/credits",
                                  json={"amountCents": 100 + n}, headers={"Idempotency-Key": str(uuid.uuid4())})

    with Load(post, threads=2, pause=0.15) as load:
        with account_locked(engine, hot["defaultBillingAccountId"]):
            wait_until(lambda: stack.broker.ready("ledger") >= QUEUED_AT_THE_CRASH, 60,
                       "charges queued behind the locked account")
            down_at = time.monotonic()
            stack.broker.stop()
            stack.broker.start()
            up_at = time.monotonic()
        refused = _requests_whose_send_failed(stack)
        charges_before = [a.result.json["id"] for a in load.answers()
                          if a.n % 2 == 0 and a.answered_at < down_at and a.result and a.result.status_code == 202
                          and a.result.headers["X-Request-Id"] not in refused]
        # No relay has run: each of these can only be applied by the message RabbitMQ confirmed before dying.
        assert wait_for_operations(engine, charges_before, timeout=90) == {i: "succeeded" for i in charges_before}

        def resumed():
            after = [a.result.json["id"] for a in load.answers() if a.sent_at > up_at + 1 and a.result
                     and a.result.status_code == 202][:10]
            return len(after) == 10 and set(statuses(engine, after).values()) == {"succeeded"}
        wait_until(resumed, 90, "the worker to apply what was sent after RabbitMQ came back")
        resumed_after = time.monotonic() - up_at
    answers = load.answers()
    print(f"{len(answers)} requests, {sum(down_at < a.sent_at < up_at for a in answers)} while RabbitMQ was down "
          f"for {up_at - down_at:.1f} s; {len(charges_before)} charges accepted before the crash; the worker "
          f"applied new ones {resumed_after:.1f} s after RabbitMQ came back")

    assert [a.error or a.result.status_code for a in answers if a.error or a.result.status_code != 202] == []
    during = [a for a in answers if down_at < a.sent_at < up_at]
    assert during and max(a.answered_at - a.sent_at for a in during) < MAX_REQUEST_SECONDS
    assert stack.worker.popen.poll() is None and sorted(stack.worker.group()) == worker_pids, \
        "the worker was replaced instead of reconnecting"

    ids = [a.result.json["id"] for a in answers]
    age_operations(engine, ids)  # what RabbitMQ refused while it was down: the relay's job
    assert stack.billing("relay").returncode == 0
    assert wait_for_operations(engine, ids, timeout=60) == {i: "succeeded" for i in ids}
    assert_applied_once(engine, [a.result.json["id"] for a in answers if a.n % 2])  # credits: one entry each
    charges = sum(a.n % 2 == 0 for a in answers)  # charges: one entry per eventId, so the balance tells
    expected = {hot["id"]: 1000 - charges,
                **{w["id"]: 1000 + sum(100 + a.n for a in answers if a.n % 2 and 1 + a.n // 2 % 2 == k)
                   for k, w in enumerate(workspaces) if k}}
    found = {w["id"]: api.call("GET", f"/workspaces/{w['id']}/billing/balance", owners[k].key).json["balanceCents"]
             for k, w in enumerate(workspaces)}
    assert found == expected
    assert_audit_passes(stack)
