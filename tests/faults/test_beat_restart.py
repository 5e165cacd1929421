"""The beat killed with SIGKILL and restarted: the periodic jobs it had sent run again, alongside the first
copies, and none of them applies money twice.

Beat writes its schedule file after the first job it sends and then every three minutes, so a beat
killed in between forgets having sent the others: the restarted one sends them again at once. The
jobs that move money are idempotent rather than locked: the relay only re-sends (applying an operation
twice posts once, its ledger key being the operation's id), the backfill's intro credit is keyed by
user, a Stripe checkout's credit by checkout, under the checkout's row lock.
"""
import dataclasses
import operator
import re
import uuid
from datetime import UTC, datetime, timedelta

from celery.beat import PersistentScheduler
from sqlalchemy import text

import beat_schedule
from domain.ids import new_id
from domain.models import Caller
from domain.services.registry import Services
from domain.store import users
from tests.faults.test_worker_killed import credit
from tests.processes import (WAIT_ON_LOCKS, age_operations, assert_applied_once, assert_audit_passes, backends_waiting_on_locks,
                             wait_for_operations, wait_until)
from worker import settings
from worker.celery_app import create_celery
from worker.payments import stripe_gateway

MONEY_JOBS = ("maintenance.relay_outbox", "accounts.backfill_default", "payments.reconcile_stripe")
HELD_JOBS = ("accounts.backfill_default", "payments.reconcile_stripe")  # they post money themselves


def overdue_schedule(stack) -> None:
    """The schedule file of a beat that last ran every job a day ago: the next beat sends them all at start."""
    app = create_celery(settings.load(stack.env))
    scheduler = PersistentScheduler(app=app, schedule_filename=str(stack.log_dir / "celerybeat-schedule"),
                                    lazy=True)
    scheduler.setup_schedule()
    for entry in scheduler.schedule.values():
        entry.last_run_at = datetime.now(UTC) - timedelta(days=1)
    scheduler.close()  # writes the file
    app.close()


def sent_jobs(beat) -> list[str]:
    return re.findall(r"Sending due task \S+ \(([\w.]+)\)", beat.output())


def job_runs(stack, name: str) -> tuple[set[str], set[str]]:
    """The ids of a job's messages the worker received, and of those it finished running."""
    output = stack.worker.output()
    return (set(re.findall(rf"Task {re.escape(name)}\[([\w-]+)\] received", output)),
            set(re.findall(rf"Task {re.escape(name)}\[([\w-]+)\] (?:succeeded|failed)", output)))


def test_a_beat_killed_and_restarted_sends_its_jobs_again_and_nothing_is_applied_twice(stack, api, services, engine,
                                                                                        stripe_api):
    stack.env.update(WAIT_ON_LOCKS)
    stack.env.update(STRIPE_API_KEY="sk_test_beat", STRIPE_WEBHOOK_SECRET="whsec_beat", STRIPE_API_BASE=stripe_api.url,
                     STRIPE_RECONCILE_AFTER="0")
    owner = api.new_user()
    workspace = api.new_workspace(owner)

    # Work for each job that moves money, set up in-process: credits whose message was lost (the relay's),
    # users left without a default account (the backfill's), Stripe checkouts paid without a webhook
    # (the reconcile's).
    credit_ids = [credit(services, workspace, 100 + i) for i in range(40)]  # `services` sends no message
    age_operations(engine, credit_ids)
    bare_users = [new_id("usr") for _ in range(10)]
    with engine.begin() as conn:
        for user_id in bare_users:
            users.insert_user(conn, user_id, f"bare-{uuid.uuid4().hex[:10]}@example.com", None)
    stripe = Services(dataclasses.replace(services.ctx, stripe=stripe_gateway(settings.load(stack.env)))).stripe
    checkouts = []
    for cents in (1500, 2500, 3500):
        checkout = stripe.create(Caller(user_id=owner.id), workspace["id"], cents, "https://app.example/ok",
                                 "https://app.example/no", None)
        stripe_api.pay(checkout.provider_ref)
        checkouts.append(checkout.id)

    # The test holds the rows both copies of the backfill and of the Stripe reconcile must write, so the
    # copies sent by the killed beat wait for the restarted beat's: then they all run at once.
    overdue_schedule(stack)
    with engine.connect() as conn, conn.begin():
        conn.execute(text("SELECT 1 FROM users WHERE id = ANY(:u) FOR UPDATE"), {"u": bare_users})
        conn.execute(text("SELECT 1 FROM checkouts WHERE id = ANY(:c) FOR UPDATE"), {"c": checkouts})
        beat = stack.start_beat(wait=False)
        stack.start(api=False, concurrency=4)  # room for two copies of each job the test holds
        wait_until(lambda: len(sent_jobs(beat)) == len(beat_schedule.SCHEDULE), 60, "beat to send every overdue job")
        beat.kill()
        first = sent_jobs(beat)
        beat = stack.start_beat()
        wait_until(lambda: len(sent_jobs(beat)) >= len(beat_schedule.SCHEDULE) - 1, 30,
                   "the new beat to send them again")
        again = [job for job in sent_jobs(beat) if job in first]
        print(f"sent by the killed beat: {first}; again by the restarted one: {again}")
        assert len(again) >= len(beat_schedule.SCHEDULE) - 1
        for job in set(MONEY_JOBS) - set(again):  # the one job the killed beat recorded sending, if any:
            stack.send_task(job)  # its second copy, as a beat killed before that write would send it
        wait_until(lambda: len(backends_waiting_on_locks(engine)) == 2 * len(HELD_JOBS), 30,
                   "both copies of each held job to wait on the rows")

    wait_for_operations(engine, credit_ids, timeout=60)
    for job in MONEY_JOBS:  # every copy of every job has finished: nothing can still post
        wait_until(lambda: operator.eq(*job_runs(stack, job)), 60, f"the runs of {job} to finish")
    runs = {job: len(job_runs(stack, job)[0]) for job in MONEY_JOBS}
    assert min(runs.values()) >= 2, runs  # the relay's every 10 s: maybe more

    assert_applied_once(engine, credit_ids)
    with engine.connect() as conn:
        defaults = conn.execute(text(
            "SELECT a.owner_user_id, a.balance_cents, (SELECT count(*) FROM ledger_entries e "
            "WHERE e.billing_account_id = a.id) FROM billing_accounts a "
            "WHERE a.is_user_default AND a.owner_user_id = ANY(:u)"), {"u": bare_users}).all()
        checkout_rows = conn.execute(text(
            "SELECT c.status, (SELECT count(*) FROM ledger_entries e "
            "WHERE e.idempotency_key = 'stripe_checkout:' || c.id) FROM checkouts c WHERE c.id = ANY(:c)"),
            {"c": checkouts}).all()
    assert sorted(user_id for user_id, _, _ in defaults) == sorted(bare_users)  # one default account each
    assert {(balance, entries) for _, balance, entries in defaults} == {(1000, 1)}  # one intro credit each
    assert [tuple(row) for row in checkout_rows] == [("completed", 1)] * len(checkouts)
    balance = api.call("GET", f"/workspaces/{workspace['id']}/billing/balance", owner.key).json
    assert balance["balanceCents"] == 1000 + sum(100 + i for i in range(40)) + 1500 + 2500 + 3500
    assert_audit_passes(stack)
