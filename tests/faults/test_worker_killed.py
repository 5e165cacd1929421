"""Workers killed with SIGKILL in the middle of a credit's transaction: nothing lost, nothing applied twice.

The test holds the billing account's row lock, so the worker's posting statement waits inside its
transaction: a deterministic "mid-task" at which to kill it.
"""
import os
import signal

from sqlalchemy import text

from domain.models import OPERATOR_CALLER
from tests.processes import (account_locked, age_operations, assert_sound, backends_waiting_on_locks,
                             blocked_mid_transaction, entries_per_operation, statuses, wait_for_operations,
                             wait_until)


def backends_gone(engine, pids: set[int]) -> bool:
    with engine.connect() as conn:
        return not conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(:p)"),
                                {"p": list(pids)}).scalar()


def credit(services, workspace: dict, cents: int) -> str:
    return services.operations.request_credit(OPERATOR_CALLER, workspace["id"], cents, "", None).id


def balance(api, owner, workspace: dict) -> int:
    return api.call("GET", f"/workspaces/{workspace['id']}/billing/balance", owner.key).json["balanceCents"]


def test_a_pool_process_killed_mid_transaction_is_redelivered_and_applies_once(stack, api, services, engine):
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


def test_a_worker_killed_with_sigkill_mid_stream_loses_nothing_and_applies_nothing_twice(stack, api, services,
                                                                                          engine):
    stack.start(api=False, concurrency=2)
    owners = [api.new_user() for _ in range(3)]
    workspaces = [api.new_workspace(owner) for owner in owners]
    hot = workspaces[0]["defaultBillingAccountId"]

    with account_locked(engine, hot):
        ids = [credit(stack.services(services), workspaces[i % 3], 100 + i) for i in range(30)]
        # Both pool processes end up inside a transaction waiting on the locked account,
        # after applying what came before for the other two accounts.
        wait_until(lambda: len(backends_waiting_on_locks(engine)) == 2, 30, "both pool processes to block")
        blocked, before = backends_waiting_on_locks(engine), statuses(engine, ids)
        stack.worker.kill()  # the whole worker: main process and pool, prefetched messages unacked
    wait_until(lambda: backends_gone(engine, blocked), 30, "the killed transactions to roll back")
    assert list(before.values()).count("running") == 2 and "succeeded" in before.values(), before

    # The dead worker's prefetched messages sit unacked in Redis until the visibility timeout (an
    # hour): a new worker, and the relay re-sending what is unfinished, must do the rest.
    stack.start(api=False)
    age_operations(engine, ids)
    assert stack.services(services).operations.relay() >= list(before.values()).count("running")

    assert wait_for_operations(engine, ids, timeout=60) == {i: "succeeded" for i in ids}
    assert entries_per_operation(engine, ids) == {i: 1 for i in ids}
    for i, workspace in enumerate(workspaces):
        assert balance(api, owners[i], workspace) == 1000 + sum(100 + n for n in range(i, 30, 3))
    assert_sound(services, *(w["defaultBillingAccountId"] for w in workspaces), *ids)
