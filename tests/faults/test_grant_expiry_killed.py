"""The grant expiry job killed with SIGKILL inside its transaction: the grant still expires exactly once.

The test holds the account's row lock, so the job's transaction waits inside it (a deterministic "middle"), kills
the pool process that runs it, and lets the redelivered message and a later beat run finish the work.
"""
import os
import signal

from sqlalchemy import text

from domain.grants import Terms
from domain.names import Task
from tests.factories import post
from tests.faults.test_worker_killed import backends_gone, balance
from tests.processes import WAIT_ON_LOCKS, account_locked, assert_audit_passes, backends_waiting_on_locks, wait_until


def _expiries(engine, account_id: str) -> list[int]:
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT amount_cents FROM ledger_entries WHERE billing_account_id = :a "
                                      "AND kind = 'expiry'"), {"a": account_id}).scalars())


def test_an_expiry_killed_mid_transaction_is_posted_once_after_redelivery(stack, api, services, engine):
    stack.env.update(WAIT_ON_LOCKS)
    stack.start(api=False, concurrency=1)
    owner = api.new_user()
    workspace = api.new_workspace(owner)
    account_id = owner.default_account_id
    post(services, account_id, 700, terms=Terms("operator", priority=90))
    with engine.begin() as conn:  # as if its expiresAt had passed
        conn.execute(text("UPDATE grants SET expires_at = now() - interval '1 second' "
                          "WHERE billing_account_id = :a AND amount_cents = 700"), {"a": account_id})

    with account_locked(engine, account_id):
        stack.send_task(Task.EXPIRE_GRANTS)
        blocked = wait_until(lambda: backends_waiting_on_locks(engine), 30, "the expiry to block on the account")
        [child] = [pid for pid in stack.worker.group() if pid != stack.worker.pid]
        os.kill(child, signal.SIGKILL)
        wait_until(lambda: child not in stack.worker.group(), 10, "the pool process to die")
    wait_until(lambda: backends_gone(engine, blocked), 30, "the killed transaction to roll back")

    # task_reject_on_worker_lost puts the message back: the new pool process runs it again.
    wait_until(lambda: _expiries(engine, account_id), 30, "the expiry entry")
    stack.send_task(Task.EXPIRE_GRANTS)  # the next beat run, and one more delivery, find nothing due
    stack.send_task(Task.EXPIRE_GRANTS)
    stack.worker.wait_for_output("ledger.expire_grants", timeout=30)
    wait_until(lambda: stack.worker.output().count("succeeded") >= 3, 30, "three runs of the job")
    assert _expiries(engine, account_id) == [-700]
    assert balance(api, owner, workspace) == 1000
    assert_audit_passes(stack)
