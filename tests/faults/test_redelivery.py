"""A message redelivered while its first delivery still runs (a visibility_timeout shorter than the task).

kombu puts an unacknowledged message back in the queue once it is older than the visibility timeout,
whether or not a worker still runs it. The test holds the billing account's row lock, so the first
delivery waits inside its transaction for longer than the timeout, and the second delivery runs
alongside it in the worker's other pool process.
"""
from sqlalchemy import text

from domain.names import Task
from tests.faults.test_worker_killed import balance, credit
from tests.processes import (WAIT_ON_LOCKS, account_locked, assert_applied_once, assert_audit_passes, backends_waiting_on_locks,
                             blocked_mid_transaction, wait_for_operations, wait_until)

VISIBILITY_TIMEOUT = 2  # seconds


def test_a_credit_redelivered_while_it_still_runs_is_applied_once(stack, api, services, engine):
    stack.env["BILLING_BROKER_VISIBILITY_TIMEOUT"] = str(VISIBILITY_TIMEOUT)
    stack.env.update(WAIT_ON_LOCKS)
    stack.start(api=False, concurrency=2)
    owner = api.new_user()
    workspace = api.new_workspace(owner)

    with account_locked(engine, workspace["defaultBillingAccountId"]):
        op_id = credit(services, workspace, 700)  # recorded without a message: the test sends the one
        task_id = stack.send_task(Task.APPLY_OPERATION, operation_id=op_id)
        blocked_mid_transaction(engine, op_id)
        wait_until(lambda: stack.worker.output().count(f"[{task_id}] received") >= 2, 30,
                   "the worker to receive the message again")
        # The second delivery runs while the first still waits: it waits too (on the operation's row,
        # which the first holds while it posts), or it ends, having found nothing to do.
        wait_until(lambda: len(backends_waiting_on_locks(engine)) == 2
                   or f"[{task_id}] succeeded" in stack.worker.output(), 30, "the second delivery to run")

    assert wait_for_operations(engine, [op_id], timeout=30) == {op_id: "succeeded"}
    assert_applied_once(engine, [op_id])
    with engine.connect() as conn:
        attempts = conn.execute(text("SELECT attempts FROM operations WHERE id = :id"), {"id": op_id}).scalar()
    assert attempts == 1  # the redelivery found it finished, and counted nothing
    assert balance(api, owner, workspace) == 1700
    assert_audit_passes(stack)
