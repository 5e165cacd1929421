"""bench/webhooks: signed Stripe events applied per second, duplicates included, beside the credit ceiling.

Creates a fresh database (--workspaces users, each with a workspace and an API key) and runs the credit
ceiling (pgbench: update the cached balance and insert an entry under a fresh unique key, one transaction
per credit, on copies of the tables). Then starts the loopback Stripe stand-in (tests/standins/stripe_api.py,
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
                           per_request_ms, percentile, row, seed_api_keys, service_env, start_api, start_redis_on,
                           start_worker, user_key, wait_until, workspace_id, write_result)
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
    p.add_argument("--concurrency", type=int, default=2, help="worker processes; pgbench clients alike")
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

    ratio = per_s / ceiling["tps"]
    service = {"deliveries": len(deliveries), "distinct_events": distinct, "answered_200": answered,
               "answered_duplicate": repeats, "stored": stored, "processed": processed, "checkouts": args.checkouts,
               "seconds": round(seconds, 2), "events_per_s": round(per_s, 1),
               "distinct_per_s": round(distinct / seconds, 1), "outcomes": outcomes,
               "post_p50_ms": ms(percentile(load.latencies, 0.5)), "post_p99_ms": ms(percentile(load.latencies, 0.99)),
               "posting_seconds": round(load.finished - load.started, 2), "cpu_ms_per_event": cpu_ms,
               "cpu_bound_per_s": round((os.cpu_count() or 1) * 1000 / sum(cpu_ms[k] for k in OURS), 1)}
    result = {"service": service, "ceiling": ceiling, "ratio": round(ratio, 4), "target_ratio": TARGET_RATIO,
              "problems": problems, "audit": checked, "cpus": os.cpu_count(),
              "config": {k: v for k, v in vars(args).items() if k != "admin_url"},
              "summary": [row("webhooks", f"{per_s:.0f} events applied/s ({len(deliveries) - distinct} "
                                          f"redeliveries of {len(deliveries)})",
                              f"{ceiling['tps']:.0f} tps (credit pgbench)", ratio, "≥ 0.5×",
                              ratio >= TARGET_RATIO and not problems)]}
    out = write_result("webhooks", result)
    log(f"service: {len(deliveries)} events ({repeats} answered as duplicates) applied in {seconds:.1f} s = "
        f"{per_s:.1f}/s (all answered in {service['posting_seconds']} s); outcomes {outcomes}; "
        f"POST p50 {service['post_p50_ms']} ms, p99 {service['post_p99_ms']} ms")
    log("CPU ms per event: " + ", ".join(f"{k} {v}" for k, v in cpu_ms.items())
        + f"; {service['cpu_bound_per_s']:.0f} events/s if every CPU ran only this run's processes")
    log(f"ceiling {ceiling['tps']:.1f} tps; ratio {ratio:.3f}x (target {TARGET_RATIO}x: "
        f"{'met' if ratio >= TARGET_RATIO else 'NOT met'}); each checkout credited once: "
        f"{'yes' if not problems else 'NO: ' + '; '.join(problems)}; written to {out}")
    return 0 if not problems and checked["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
