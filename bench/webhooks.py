"""bench/webhooks: signed Stripe events applied per second, duplicates included, beside the two-commit ceiling.

Creates a fresh database (--workspaces users, each with a workspace and an API key) and runs two pgbench
ceilings on copies of the tables: the webhook's own durable work in two commits per delivery (the accept: the
event stored under its id; the apply: the checkout completed, the credit posted, its grant opened, the tier stored,
the event marked processed), in the load's mix of first events, redeliveries and second events, which is the
figure's ceiling; and, beside it, issue 9's one-transaction credit (update the cached balance and insert an entry
under a fresh unique key). Then starts the loopback Stripe stand-in (tests/standins/stripe_api.py,
which answers the SDK's session calls), a private redis-server, the real API and a real worker; creates
--checkouts Stripe checkouts through the API, pays them at the stand-in, and posts to /webhooks/stripe one
signed checkout.session.completed per checkout plus duplicates: redeliveries of the same event, and a
second event (async_payment_succeeded) for some sessions. It waits until every stored event is applied
and checks that each checkout was credited exactly once. Ends with `billing audit`. See bench/README.md.
"""
import argparse
import itertools
import json
import os
import random
import secrets
import sys
import threading
import time
import uuid
from datetime import UTC, datetime

import psycopg

from bench.harness import (Child, CpuMeter, Load, SetupError, audit, credit_ceiling, fresh_database, log, ms,
                           per_request_ms, percentile, row, run_pgbench, seed_api_keys, service_env, start_api,
                           start_redis_on, start_worker, user_key, wait_until, workspace_id, write_result)
from bench.two_commits import GRANT, copy_tables, posting_sql
from domain.ids import SQL_HEX
from domain.tiers import DEFAULT_TABLE, TierTable, decide
from tests.standins.stripe_api import StripeStandIn, signed_event

TARGET_RATIO = 0.5
OURS = ("api", "worker", "postgres", "redis", "loadgen")  # the CPU the run spends: the service and its load

PROGRESS = "SELECT count(*), count(processed_at), max(processed_at) FROM stripe_events"
CHECK = """
SELECT (SELECT count(*) FROM checkouts WHERE status = 'completed'),
       (SELECT count(*) FROM checkouts c WHERE (SELECT count(*) FROM ledger_entries e
                                                WHERE e.idempotency_key = 'stripe_checkout:' || c.id) <> 1),
       (SELECT coalesce(sum(amount_cents), 0) FROM ledger_entries WHERE idempotency_key LIKE 'stripe_checkout:%'),
       (SELECT coalesce(sum(amount_cents), 0) FROM checkouts)
"""
OUTCOMES = "SELECT outcome, count(*) FROM stripe_events GROUP BY 1 ORDER BY 2 DESC"

# --- the two-commit ceiling: pgbench doing a delivery's durable work, the accept then the apply

CEILING_SCHEMA = "ceiling_webhooks"
CEILING_TABLES = ("billing_accounts", "ledger_entries", "grants", "account_tiers", "checkouts", "stripe_events")

# Checkout n of the pool (client c's k-th credit is n = c * cap + k): its ids, amount and workspace as pgbench and
# the seed both derive them. Sessions, intents and events are named as the stand-in names them (cs_test_ + 32 hex).
CHECKOUT = "'chk_' || md5('chk' || {n})"
SESSION = "'cs_test_' || md5('cs' || {n})"
INTENT = "'pi_' || left(md5('pi' || {n}), 24)"
EVENT = "'evt_' || left(md5('evt' || {n}), 24)"
WORKSPACE, ACCOUNT = "'ws_' || md5('w' || ({n} % {w} + 1))", "'ba_' || md5('a' || ({n} % {w} + 1))"
AMOUNT = "50 + ({n} * 7919) % 99951"

# The pending checkouts the API would have created (provider_ref and url set from the stand-in's session).
POOL = f"""
INSERT INTO {{s}}.checkouts (id, provider, workspace_id, billing_account_id, amount_cents, created_by, provider_ref,
                            url, details)
SELECT {CHECKOUT.format(n='n')}, 'stripe', {WORKSPACE.format(n='n', w='{w}')}, {ACCOUNT.format(n='n', w='{w}')},
       {AMOUNT.format(n='n')}, 'usr_' || md5('u' || (n % {{w}} + 1)), {SESSION.format(n='n')},
       'https://checkout.stripe.test/c/pay/' || {SESSION.format(n='n')},
       '{{{{"successUrl": "https://example.com/done", "cancelUrl": "https://example.com/cancel"}}}}'
FROM generate_series(0, {{clients}} - 1) c,
     generate_series(CAST(c AS bigint) * {{cap}} + 1, CAST(c AS bigint) * {{cap}} + {{cap}}) n
"""

# What the API stores of a paid session's event: {"object": <the session>}, the stand-in's fields.
PAYLOAD = ("""'{{"object": {{"id": "' || {session} || '", "object": "checkout.session", "mode": "payment", """
           """"status": "complete", "payment_status": "paid", "amount_total": ' || {amount} || ', "currency": "usd", """
           """"client_reference_id": "' || {checkout} || '", "metadata": {{"checkout_id": "' || {checkout} """
           """|| '", "workspace_id": "' || {workspace} || '", "billing_account_id": "' || {account} || '"}}, """
           """"success_url": "https://example.com/done", "cancel_url": "https://example.com/cancel", """
           """"payment_intent": "' || {intent} || '", "created": 1796511489, "customer": null, """
           """"url": "https://checkout.stripe.test/c/pay/' || {session} || '"}}}}'""")

# The accept: domain/store/stripe_events.py's _STORE, autocommitted (one commit, none for a repeat).
ACCEPT = """INSERT INTO {s}.stripe_events (id, type, payload) VALUES ({event}, '{type}', CAST({payload} AS jsonb))
ON CONFLICT DO NOTHING RETURNING id;
"""

# The apply of a paid session's event, in one transaction: the checkout completed (locked, pending and paid in
# full, as _credit checks), the credit posted by domain/store/ledger.py's _POST, its paid grant opened
# (domain/store/grants.py's _OPEN), the account's tier stored (domain/store/batch.py's inputs and save, in one
# statement), the event marked processed (stripe_events' _MARK). The outbox's flush writes no row without an
# endpoint subscribed, so it is not here.
APPLY_CREDIT = """BEGIN;
UPDATE {s}.checkouts c SET status = 'completed', completed_at = now(), updated_at = now(), provider_ref = {session},
       details = c.details || jsonb_build_object('paymentIntent', {intent}), failure_reason = NULL
WHERE c.id = {checkout} AND c.provider = 'stripe' AND c.status = 'pending' AND c.amount_cents = :amount
RETURNING c.billing_account_id, c.workspace_id \\gset c_
{posting} \\gset e_
{grant}
INSERT INTO {s}.account_tiers AS t (billing_account_id, tier, reason, paid_cents, balance_cents, as_of_entry_id,
                                    computed_at)
SELECT v.id, {tier}, {reason}, v.paid, v.balance, v.as_of, now()
FROM (SELECT a.id, a.balance_cents AS balance,
             COALESCE((SELECT SUM(e.amount_cents) FROM {s}.ledger_entries e WHERE e.billing_account_id = a.id
                       AND e.kind IN ('stripe_topup', 'x402_topup', 'refund')), 0) AS paid,
             COALESCE((SELECT MAX(e.id) FROM {s}.ledger_entries e WHERE e.billing_account_id = a.id), 0) AS as_of
      FROM {s}.billing_accounts a WHERE a.id = :c_billing_account_id) v
ON CONFLICT (billing_account_id) DO UPDATE
SET tier = EXCLUDED.tier, reason = EXCLUDED.reason, paid_cents = EXCLUDED.paid_cents,
    balance_cents = EXCLUDED.balance_cents, as_of_entry_id = EXCLUDED.as_of_entry_id, computed_at = now()
WHERE t.as_of_entry_id <= EXCLUDED.as_of_entry_id;
UPDATE {s}.stripe_events e SET processed_at = now(), outcome = 'credited'
WHERE e.id = {event} AND e.processed_at IS NULL;
COMMIT;
"""

# The apply of a second paid event of a checkout credited already: the checkout locked and found completed (as
# _checkout_of locks it), the event marked processed; nothing else is written.
APPLY_AGAIN = """BEGIN;
UPDATE {s}.stripe_events e
SET processed_at = now(), outcome = (SELECT CASE WHEN c.status = 'completed' THEN 'already_credited' END
                                     FROM {s}.checkouts c WHERE c.id = {checkout} FOR UPDATE)
WHERE e.id = {event} AND e.processed_at IS NULL;
COMMIT;
"""

# One delivery per pgbench transaction, in the load's mix: a paid session's first event (accepted, then applied:
# client c's next checkout k), a redelivery of one of c's events (accepted as a repeat: nothing stored, nothing
# applied), or a second paid event of one of c's checkouts (accepted, then applied as already credited).
CEILING_SCRIPT = """\\set r random(1, 1000000)
\\if :k = 0 OR :r <= {first_ppm}
\\set k :k + 1
\\set n :client_id * {cap} + :k
\\set amount {amount}
{accept_first}{apply_credit}\\elif :r <= {repeat_ppm}
\\set n :client_id * {cap} + random(1, :k)
\\set amount {amount}
{accept_first}\\else
\\set m :m + 1
\\set n :client_id * {cap} + random(1, :k)
\\set amount {amount}
{accept_second}{apply_again}\\endif
"""

CEILING_CHECK = """
SELECT (SELECT count(*) FROM {s}.stripe_events WHERE processed_at IS NULL),
       (SELECT count(*) FROM {s}.stripe_events WHERE outcome = 'credited'),
       (SELECT count(*) FROM {s}.stripe_events WHERE outcome = 'already_credited'),
       (SELECT count(*) FROM {s}.stripe_events),
       (SELECT count(*) FROM {s}.checkouts c WHERE c.status = 'completed'),
       (SELECT count(*) FROM {s}.checkouts c
        LEFT JOIN (SELECT idempotency_key, count(*) AS n FROM {s}.ledger_entries GROUP BY 1) e
               ON e.idempotency_key = 'stripe_checkout:' || c.id
        WHERE COALESCE(e.n, 0) <> CASE WHEN c.status = 'completed' THEN 1 ELSE 0 END),
       (SELECT count(*) FROM {s}.ledger_entries e WHERE e.kind = 'stripe_topup' AND e.description = 'Stripe top-up'
            AND NOT EXISTS (SELECT 1 FROM {s}.grants g WHERE g.entry_id = e.id)),
       (SELECT count(*) FROM {s}.billing_accounts a
        WHERE a.balance_cents <> (SELECT COALESCE(SUM(e.amount_cents), 0) FROM {s}.ledger_entries e
                                  WHERE e.billing_account_id = a.id)
           OR EXISTS (SELECT 1 FROM {s}.ledger_entries e WHERE e.billing_account_id = a.id AND e.kind = 'stripe_topup'
                      AND e.description = 'Stripe top-up')
              AND NOT EXISTS (SELECT 1 FROM {s}.account_tiers t WHERE t.billing_account_id = a.id
                              AND t.as_of_entry_id = (SELECT max(e.id) FROM {s}.ledger_entries e
                                                      WHERE e.billing_account_id = a.id)))
"""


def tier_sql(balance: str, paid: str, table: TierTable = DEFAULT_TABLE) -> tuple[str, str]:
    """domain.tiers.decide in SQL over a balance and a paid total: the tier's CASE and the reason's."""
    steps = [(f"{balance} <= 0", decide(0, 0, table))]
    steps += [(f"{paid} >= {t.min_paid_cents}", decide(1, t.min_paid_cents, table)) for t in reversed(table.paid)]
    below = decide(1, -1, table)
    return tuple("CASE " + " ".join(f"WHEN {when} THEN '{getattr(d, field)}'" for when, d in steps)
                 + f" ELSE '{getattr(below, field)}' END" for field in ("tier", "reason"))


def ceiling_script(cap: int, workspaces: int, redeliveries: float, second_events: float) -> str:
    share = 1 + redeliveries + second_events  # deliveries per checkout
    first = {"n": ":n", "w": workspaces}
    ids = {"checkout": CHECKOUT.format(**first), "session": SESSION.format(**first), "intent": INTENT.format(**first),
           "workspace": WORKSPACE.format(**first), "account": ACCOUNT.format(**first), "s": CEILING_SCHEMA}
    payload = PAYLOAD.format(amount=":amount", **ids)
    tier, reason = tier_sql("v.balance", "v.paid")
    posting = posting_sql(CEILING_SCHEMA, workspace_id=":c_workspace_id", kind="'stripe_topup'",
                          amount="CAST(:amount AS bigint)", description="'Stripe top-up'", reference=ids["session"],
                          key="'stripe_checkout' || chr(58) || " + ids["checkout"], account_id=":c_billing_account_id",
                          allow_negative="false")
    second_event = "'evt_' || left(md5('evs' || :client_id || '_' || :m), 24)"
    return CEILING_SCRIPT.format(
        first_ppm=round(1e6 / share), repeat_ppm=round(1e6 * (1 + redeliveries) / share), cap=cap,
        amount=AMOUNT.format(n=":n"),
        accept_first=ACCEPT.format(event=EVENT.format(n=":n"), type="checkout.session.completed", payload=payload,
                                   s=CEILING_SCHEMA),
        accept_second=ACCEPT.format(event=second_event, type="checkout.session.async_payment_succeeded",
                                    payload=payload, s=CEILING_SCHEMA),
        apply_credit=APPLY_CREDIT.format(event=EVENT.format(n=":n"), tier=tier, reason=reason, posting=posting,
                                         grant=GRANT.format(s=CEILING_SCHEMA, source="stripe", category="paid",
                                                           hex=SQL_HEX), **ids),
        apply_again=APPLY_AGAIN.format(event=second_event, **ids))


def webhook_ceiling(url: str, workspaces: int, clients: int, seconds: int, redeliveries: float,
                    second_events: float) -> dict:
    """pgbench of ceiling_script on copies of the tables a delivery writes, with a pool of pending checkouts (more
    than pgbench can credit in `seconds`): deliveries accepted and applied per second. Run it before the service
    starts; the copies are dropped after."""
    cap = -(-seconds * 6000 // clients)  # checkouts per client: 6,000 credits/s in all would not exhaust them
    with psycopg.connect(url, autocommit=True) as conn:
        copy_tables(conn, CEILING_SCHEMA, CEILING_TABLES)
        conn.execute(POOL.format(s=CEILING_SCHEMA, w=workspaces, clients=clients, cap=cap))
        conn.execute(f"VACUUM ANALYZE {CEILING_SCHEMA}.checkouts")
    text = ceiling_script(cap, workspaces, redeliveries, second_events)
    run = run_pgbench(url, text, clients, seconds, "webhooks-two-commits", details=True, defines={"k": 0, "m": 0})
    with psycopg.connect(url, autocommit=True) as conn:
        counts = conn.execute(CEILING_CHECK.format(s=CEILING_SCHEMA)).fetchone()
        tiers = conn.execute(f"SELECT balance_cents, paid_cents, tier, reason FROM {CEILING_SCHEMA}.account_tiers")
        miscast = sum((d := decide(balance, paid)).tier != tier or d.reason != reason
                      for balance, paid, tier, reason in tiers)
        conn.execute(f"DROP SCHEMA {CEILING_SCHEMA} CASCADE")  # its rows would add to the service's table scans
    unapplied, credited, again, stored, completed, not_once, no_grant, unbalanced = counts
    if (unapplied or not_once or no_grant or unbalanced or miscast or credited != completed
            or credited + again != stored or stored > (run["transactions"] or 0)):
        raise SetupError(f"the webhook ceiling's copies do not add up: {unapplied} events unapplied, {credited} "
                         f"credited, {again} already credited, {stored} stored, {completed} checkouts completed, "
                         f"{not_once} not credited once, {no_grant} credits without a grant, {unbalanced} accounts off "
                         f"(balance or tier), {miscast} tiers not domain.tiers.decide's")
    repeats = (run["transactions"] or 0) - stored
    log(f"two-commit webhook ceiling: {run['tps']:.0f} deliveries/s ({credited} credited, {again} second events, "
        f"{repeats} redeliveries; {clients} pgbench clients)")
    return run | {"sql": text, "credited": credited, "second_events": again, "redeliveries": repeats}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--database", default="billing_bench_webhooks")
    p.add_argument("--workspaces", type=int, default=1000)
    p.add_argument("--checkouts", type=int, default=2000)
    p.add_argument("--redeliveries", type=float, default=0.2, help="share of events Stripe sends twice")
    p.add_argument("--second-events", type=float, default=0.1,
                   help="share of sessions that also get checkout.session.async_payment_succeeded")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--concurrency", type=int, default=2, help="worker processes; the credit pgbench's clients alike")
    p.add_argument("--two-commit-clients", type=int,
                   help="the two-commit ceiling's pgbench clients (default: --clients, as many deliveries in flight "
                        "as the load has)")
    p.add_argument("--pgbench-seconds", type=int, default=15)
    p.add_argument("--api-workers", type=int, default=2)
    p.add_argument("--api-threads", type=int, default=4)
    p.add_argument("--redis-port", type=int, default=6405)
    p.add_argument("--drain-timeout", type=int, default=600)
    p.add_argument("--seed", type=int, default=1)
    return p.parse_args()


def main() -> int:
    args = parse_args()
    children: list[Child] = []
    stripe = StripeStandIn().start()
    try:
        return run(args, children, stripe)
    except SetupError as exc:
        log(f"set-up failed: {exc}")
        return 2
    finally:
        for child in reversed(children):
            child.stop()
        stripe.stop()


def queue(items: list, build) -> callable:
    """A thread-safe next_request for harness.Load: build(item) for each item, then None."""
    numbers, lock = itertools.count(), threading.Lock()

    def next_request():
        with lock:
            i = next(numbers)
        return build(items[i]) if i < len(items) else None
    return next_request


def run(args, children: list[Child], stripe: StripeStandIn) -> int:
    rng = random.Random(args.seed)
    log(f"database {args.database}: {args.workspaces} users, workspaces and keys")
    database_url = fresh_database(args.admin_url, args.database, args.workspaces, 1000)
    seed_api_keys(database_url, args.workspaces)
    ceiling = credit_ceiling(database_url, 1, args.workspaces, args.concurrency, args.pgbench_seconds)
    two_commits = webhook_ceiling(database_url, args.workspaces, args.two_commit_clients or args.clients,
                                  args.pgbench_seconds, args.redeliveries, args.second_events)

    secret = f"whsec_{secrets.token_hex(16)}"
    redis_url = f"redis://127.0.0.1:{args.redis_port}/0"
    start_redis_on(children, args.redis_port)
    env = service_env(database_url, redis_url, STRIPE_API_KEY="sk_test_bench", STRIPE_WEBHOOK_SECRET=secret,
                      STRIPE_API_BASE=stripe.url)
    start_worker(children, env, "worker", args.concurrency, "bench-webhooks@%h")
    port = start_api(children, env, args.api_workers, args.api_threads)

    # checkouts through the API (the stand-in answers the session calls), then paid at the stand-in
    orders = [(n % args.workspaces + 1, rng.randint(50, 100_000)) for n in range(args.checkouts)]
    create = Load(port, args.clients, queue(orders, lambda order: (
        f"/workspaces/{workspace_id(order[0])}/billing/checkout",
        json.dumps({"amountCents": order[1], "successUrl": "https://example.com/done",
                    "cancelUrl": "https://example.com/cancel"}),
        {"Authorization": f"Bearer {user_key(order[0])}", "Content-Type": "application/json"})),
        time.monotonic() + 600)
    create.run()
    if create.statuses != {201: args.checkouts}:
        raise SetupError(f"creating {args.checkouts} checkouts answered {dict(create.statuses)}")
    log(f"{args.checkouts} checkouts created in {create.finished - create.started:.1f} s")
    paid = [stripe.pay(body["stripeSessionId"]) for body in create.bodies]

    # deliveries: one completed event per session, some sent twice, some sessions with a second event
    deliveries = [("checkout.session.completed", session, f"evt_{uuid.uuid4().hex[:24]}") for session in paid]
    deliveries += [d for d in deliveries if rng.random() < args.redeliveries]
    deliveries += [("checkout.session.async_payment_succeeded", session, f"evt_{uuid.uuid4().hex[:24]}")
                   for session in paid if rng.random() < args.second_events]
    rng.shuffle(deliveries)
    distinct = len({event_id for _, _, event_id in deliveries})

    def post(delivery):
        event_type, session, event_id = delivery
        payload, signature = signed_event(secret, event_type, session, event_id=event_id)  # signed as sent
        return "/webhooks/stripe", payload, {"Stripe-Signature": signature, "Content-Type": "application/json"}
    log(f"posting {len(deliveries)} signed events ({distinct} distinct) from {args.clients} clients")
    meter = CpuMeter(children, database_url, args.database)
    before = meter.start()
    start_wall = datetime.now(UTC)
    load = Load(port, args.clients, queue(deliveries, post), time.monotonic() + 600)
    load.run()
    answered = load.statuses.get(200, 0)
    repeats = sum(1 for body in load.bodies if body.get("duplicate"))

    progress = {}
    with psycopg.connect(database_url, autocommit=True) as conn:
        def applied() -> bool:
            progress["row"] = conn.execute(PROGRESS).fetchone()
            return progress["row"][0] >= distinct and progress["row"][1] >= progress["row"][0]
        wait_until(applied, args.drain_timeout, f"{distinct} events to be applied")
        cpu_ms = per_request_ms(before, meter.stop(), len(deliveries))
        stored, processed, last = progress["row"]
        completed, not_once, topped_up, ordered = conn.execute(CHECK).fetchone()
        outcomes = dict(conn.execute(OUTCOMES).fetchall())
    seconds = (last - start_wall).total_seconds()
    per_s = answered / seconds

    problems = []
    if answered != len(deliveries):
        problems.append(f"{len(deliveries)} events posted, {answered} answered 200: {dict(load.statuses)}")
    if completed != args.checkouts or not_once:
        problems.append(f"{completed} of {args.checkouts} checkouts completed; {not_once} not credited exactly once")
    if topped_up != ordered:
        problems.append(f"stripe_topup entries sum to {topped_up}, the checkouts to {ordered}")
    if outcomes.get("credited") != args.checkouts:
        problems.append(f"outcomes {outcomes}: expected {args.checkouts} credited")
    for child in reversed(children):
        child.stop()
    children.clear()
    checked = audit(env)

    ratio, ratio1 = per_s / two_commits["tps"], per_s / ceiling["tps"]
    service = {"deliveries": len(deliveries), "distinct_events": distinct, "answered_200": answered,
               "answered_duplicate": repeats, "stored": stored, "processed": processed, "checkouts": args.checkouts,
               "seconds": round(seconds, 2), "events_per_s": round(per_s, 1),
               "distinct_per_s": round(distinct / seconds, 1), "outcomes": outcomes,
               "post_p50_ms": ms(percentile(load.latencies, 0.5)), "post_p99_ms": ms(percentile(load.latencies, 0.99)),
               "posting_seconds": round(load.finished - load.started, 2), "cpu_ms_per_event": cpu_ms,
               "cpu_bound_per_s": round((os.cpu_count() or 1) * 1000 / sum(cpu_ms[k] for k in OURS), 1)}
    result = {"service": service, "two_commit_ceiling": two_commits, "ceiling": ceiling,
              "ratio_to_two_commit_ceiling": round(ratio, 4), "ratio_to_credit_ceiling": round(ratio1, 4),
              "target_ratio": TARGET_RATIO, "problems": problems, "audit": checked, "cpus": os.cpu_count(),
              "config": {k: v for k, v in vars(args).items() if k != "admin_url"},
              "summary": [row("webhooks", f"{per_s:.0f} events applied/s ({len(deliveries) - distinct} "
                                          f"redeliveries of {len(deliveries)})",
                              f"{two_commits['tps']:.0f} deliveries/s (pgbench: accept + apply, two commits, the same "
                              f"mix, -c {two_commits['clients']}); one-transaction credit pgbench: "
                              f"{ceiling['tps']:.0f} tps ({ratio1:.2f}×)", ratio, "≥ 0.5×",
                              ratio >= TARGET_RATIO and not problems)]}
    out = write_result("webhooks", result)
    log(f"service: {len(deliveries)} events ({repeats} answered as duplicates) applied in {seconds:.1f} s = "
        f"{per_s:.1f}/s (all answered in {service['posting_seconds']} s); outcomes {outcomes}; "
        f"POST p50 {service['post_p50_ms']} ms, p99 {service['post_p99_ms']} ms")
    log("CPU ms per event: " + ", ".join(f"{k} {v}" for k, v in cpu_ms.items())
        + f"; {service['cpu_bound_per_s']:.0f} events/s if every CPU ran only this run's processes")
    log(f"two-commit ceiling {two_commits['tps']:.1f} deliveries/s: ratio {ratio:.3f}x (target {TARGET_RATIO}x: "
        f"{'met' if ratio >= TARGET_RATIO else 'NOT met'}); one-transaction credit ceiling {ceiling['tps']:.1f} tps: "
        f"{ratio1:.3f}x; each checkout credited once: "
        f"{'yes' if not problems else 'NO: ' + '; '.join(problems)}; written to {out}")
    return 0 if not problems and checked["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
