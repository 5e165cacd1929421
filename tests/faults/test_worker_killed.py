"""Workers killed with SIGKILL in the middle of a credit's transaction: nothing lost, nothing applied twice.

The first two tests hold the billing account's row lock, so the worker's posting statement waits inside
its transaction: a deterministic "mid-task" at which to kill it. The third kills at random moments while
credits stream in through the API (FAULT_SEED=<seed> replays the same choices).
"""
import os
import random
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import text

from tests.processes import (WAIT_ON_LOCKS, account_locked, age_operations, assert_applied_once, assert_audit_passes, assert_sound,
                             backends_waiting_on_locks, blocked_mid_transaction, credit,
                             credits_until_both_pool_processes_block, entries_per_operation, statuses,
                             two_pool_processes_and_workspaces, wait_for_operations, wait_until)


def backends_gone(engine, pids: set[int]) -> bool:
    with engine.connect() as conn:
        return not conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(:p)"),
                                {"p": list(pids)}).scalar()


def balance(api, owner, workspace: dict) -> int:
    return api.call("GET", f"/workspaces/{workspace['id']}/billing/balance", owner.key).json["balanceCents"]


@pytest.mark.rabbitmq
def test_a_pool_process_killed_mid_transaction_is_redelivered_and_applies_once(stack, api, services, engine):
    stack.env.update(WAIT_ON_LOCKS)
    stack.start(api=False, concurrency=1)
    owner = api.new_user()  # set up in-process: no provisioning task to queue ahead of the credit
    workspace = api.new_workspace(owner)
    account_id = workspace["defaultBillingAccountId"]

    with account_locked(engine, account_id):
        op_id = credit(stack.services(services), workspace, 900)
        blocked = blocked_mid_transaction(engine, op_id)
        [child] = [pid for pid in stack.worker.group() if pid != stack.worker.pid]
        os.kill(child, signal.SIGKILL)  # as the OOM killer would: the main process survives
        wait_until(lambda: child not in stack.worker.group(), 10, "the pool process to die")
    wait_until(lambda: backends_gone(engine, blocked), 30, "the killed transaction to roll back")

    # task_reject_on_worker_lost puts the message back at once: no relay needed.
    assert wait_for_operations(engine, [op_id], timeout=30) == {op_id: "succeeded"}
    assert "WorkerLostError" in stack.worker.output()
    assert entries_per_operation(engine, [op_id]) == {op_id: 1}
    with engine.connect() as conn:
        attempts = conn.execute(text("SELECT attempts FROM operations WHERE id = :id"), {"id": op_id}).scalar()
    assert attempts == 2
    assert balance(api, owner, workspace) == 1900
    assert_sound(services, account_id, op_id)


@pytest.mark.rabbitmq
def test_a_worker_killed_with_sigkill_mid_stream_loses_nothing_and_applies_nothing_twice(stack, api, services,
                                                                                          engine):
    owners, workspaces = two_pool_processes_and_workspaces(stack, api, 3)
    hot = workspaces[0]["defaultBillingAccountId"]

    with account_locked(engine, hot):
        ids = credits_until_both_pool_processes_block(stack, services, engine, workspaces)
        blocked, before = backends_waiting_on_locks(engine), statuses(engine, ids)
        stack.worker.kill()  # the whole worker: main process and pool, prefetched messages unacked
    wait_until(lambda: backends_gone(engine, blocked), 30, "the killed transactions to roll back")
    assert list(before.values()).count("running") == 2 and "succeeded" in before.values(), before

    # The dead worker's prefetched messages sit unacked in Redis until the visibility timeout (an hour;
    # RabbitMQ delivers them again when the dead connection closes): a new worker, and the relay re-sending
    # what is unfinished, must do the rest, once.
    stack.start(api=False)
    age_operations(engine, ids)
    assert stack.services(services).relay.send_due() >= list(before.values()).count("running")

    assert wait_for_operations(engine, ids, timeout=60) == {i: "succeeded" for i in ids}
    assert entries_per_operation(engine, ids) == {i: 1 for i in ids}
    for i, workspace in enumerate(workspaces):
        assert balance(api, owners[i], workspace) == 1000 + sum(100 + n for n in range(i, 30, 3))
    assert_sound(services, *(w["defaultBillingAccountId"] for w in workspaces), *ids)


CREDITS = 500
WORKSPACES = 5


def _in_flight(engine, accepted, patience: float = 10.0) -> int:
    """Accepted credits not applied yet, waiting up to `patience` seconds for there to be some (a worker that keeps
    up leaves none most of the time, the more so on a machine busy with other work, where credits arrive slower)."""
    deadline = time.monotonic() + patience
    while True:
        unfinished = sum(s in ("queued", "running") for s in statuses(engine, accepted()).values())
        if unfinished or time.monotonic() > deadline:
            return unfinished
        time.sleep(0.01)


def test_500_credits_in_flight_survive_sigkills_at_random_points_and_apply_once(stack, api, services, engine):
    seed = int(os.environ.get("FAULT_SEED") or random.randrange(2**32))
    print(f"FAULT_SEED={seed}")  # to replay the same kills
    rng = random.Random(seed)
    # Three kills in a random order, each once a random number of credits has been accepted and a random
    # moment later: the whole worker once, a single pool process (as the OOM killer picks one) twice.
    kinds = rng.sample(["worker", "pool process", "pool process"], 3)
    plan = list(zip(sorted(rng.sample(range(50, CREDITS - 50), len(kinds))), kinds))
    stack.start(concurrency=2)
    owners = [api.new_user() for _ in range(WORKSPACES)]
    workspaces = [api.new_workspace(owner) for owner in owners]

    def post(i: int):
        return stack.api.operator("POST", f"/workspaces/{workspaces[i % WORKSPACES]['id']}/billing/credits",
                                  json={"amountCents": 100 + i}, headers={"Idempotency-Key": f"kill-{seed}-{i}"})

    def accepted() -> list[str]:
        return [a.result().json["id"] for a in answers if a.done() and a.result().status_code == 202]

    kills = []  # (what was killed, how many accepted credits were unfinished at that moment)
    with ThreadPoolExecutor(4) as pool:
        answers = [pool.submit(post, i) for i in range(CREDITS)]
        for threshold, kind in plan:
            wait_until(lambda: sum(a.done() for a in answers) >= threshold, 60, f"{threshold} answers")
            time.sleep(rng.uniform(0, 0.3))
            unfinished = _in_flight(engine, accepted)  # a worker that keeps up leaves gaps: kill in none
            if kind == "pool process":
                children = wait_until(lambda: [p for p in stack.worker.group() if p != stack.worker.pid], 10,
                                      "a pool process")
                os.kill(rng.choice(children), signal.SIGKILL)
            else:  # its prefetched messages stay unacknowledged in Redis
                stack.worker.kill()
                stack.start(api=False, concurrency=2)
            kills.append((kind, unfinished))
        answers = [a.result() for a in answers]
    print(f"kills (what, unfinished credits): {kills}")
    assert [a.status_code for a in answers] == [202] * CREDITS, [a.text for a in answers if a.status_code != 202]
    assert any(unfinished for _, unfinished in kills), "no kill caught a credit in flight"

    # What a killed worker held stays unacknowledged in Redis for the visibility timeout (an hour):
    # the relay (beat's job) re-sends whatever is unfinished once it looks abandoned.
    ids = [a.json["id"] for a in answers]
    age_operations(engine, ids)
    stack.services(services).relay.send_due()
    wait_for_operations(engine, ids, timeout=60)
    assert_applied_once(engine, ids)
    for n, workspace in enumerate(workspaces):
        assert balance(api, owners[n], workspace) == 1000 + sum(100 + i for i in range(n, CREDITS, WORKSPACES))
    assert_audit_passes(stack)
