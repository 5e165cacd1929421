"""bench/hot_account: credits to one account, end to end, beside pgbench crediting one row.

Creates a fresh database with one workspace, runs the credit ceiling first (pgbench: update the cached
balance and insert an entry under a fresh unique key, one transaction per credit, every client on the same
row), then starts a private redis-server, the real API and a real worker, posts --credits credits to that
one workspace from keep-alive clients, waits until every operation finished and checks that no update was
lost: the final balance is the opening balance plus every credit sent, and equals the sum of the entries.
Ends with `billing audit`. See bench/README.md.
"""
import argparse
import itertools
import json
import os
import random
import sys
import threading
import time
from datetime import UTC, datetime

import psycopg

from bench.harness import (Child, Load, audit, credit_ceiling, fresh_database, log, ms, percentile, row,
                           run_with_children, service_env, start_api, start_redis_on, start_worker, wait_until,
                           workspace_id, write_result)

TARGET_RATIO = 0.5
OPENING_CENTS = 1000

PROGRESS = """
SELECT count(*) FILTER (WHERE status = 'succeeded'), count(*) FILTER (WHERE status = 'failed'),
       max(updated_at) FILTER (WHERE status = 'succeeded'), max(attempts)
FROM operations WHERE kind = 'credit'
"""
LEDGER = """
SELECT a.balance_cents, (SELECT sum(amount_cents) FROM ledger_entries e WHERE e.billing_account_id = a.id),
       (SELECT count(*) FROM ledger_entries e WHERE e.billing_account_id = a.id AND e.kind = 'credit_grant'),
       (SELECT coalesce(sum((payload->>'amountCents')::bigint), 0) FROM operations WHERE status = 'succeeded')
FROM billing_accounts a
"""


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--database", default="billing_bench_hot_account")
    p.add_argument("--credits", type=int, default=3000)
    p.add_argument("--seconds", type=int, default=120, help="stop sending after this long")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--concurrency", type=int, default=2, help="worker processes; pgbench clients alike")
    p.add_argument("--pgbench-seconds", type=int, default=15)
    p.add_argument("--api-workers", type=int, default=2)
    p.add_argument("--api-threads", type=int, default=4)
    p.add_argument("--redis-port", type=int, default=6401)
    p.add_argument("--drain-timeout", type=int, default=600)
    p.add_argument("--seed", type=int, default=1)
    return p.parse_args()


def main() -> int:
    return run_with_children(run, parse_args())


def run(args, children: list[Child]) -> int:
    log(f"database {args.database}: one workspace, opening balance {OPENING_CENTS} cents")
    database_url = fresh_database(args.admin_url, args.database, 1, OPENING_CENTS)
    ceiling = credit_ceiling(database_url, 1, 1, args.concurrency, args.pgbench_seconds)

    redis_url = f"redis://127.0.0.1:{args.redis_port}/0"
    start_redis_on(children, args.redis_port)
    env = service_env(database_url, redis_url)
    start_worker(children, env, "worker", args.concurrency, "bench-hot-account@%h")
    port = start_api(children, env, args.api_workers, args.api_threads)

    rng = random.Random(args.seed)
    amounts = [rng.randint(1, 5000) for _ in range(args.credits)]
    numbers, lock = itertools.count(), threading.Lock()
    path = f"/workspaces/{workspace_id(1)}/billing/credits"
    token = env["BILLING_OPERATOR_TOKEN"]

    def next_request():
        with lock:
            i = next(numbers)
        if i >= len(amounts):
            return None
        return path, json.dumps({"amountCents": amounts[i], "description": "hot account"}), {
            "Authorization": f"Bearer {token}", "Content-Type": "application/json", "Idempotency-Key": f"hot-{i}"}
    log(f"posting {args.credits} credits to one workspace from {args.clients} clients; worker concurrency "
        f"{args.concurrency}")
    start_wall = datetime.now(UTC)
    load = Load(port, args.clients, next_request, time.monotonic() + args.seconds)
    load.run()
    accepted = load.statuses.get(202, 0)
    sent = sum(load.statuses.values())

    progress = {}
    with psycopg.connect(database_url, autocommit=True) as conn:
        def finished() -> bool:
            progress["row"] = conn.execute(PROGRESS).fetchone()
            return progress["row"][0] + progress["row"][1] >= accepted
        wait_until(finished, args.drain_timeout, f"{accepted} credits to be applied")
        succeeded, failed, last, max_attempts = progress["row"]
        balance, entries_sum, entries, credited = conn.execute(LEDGER).fetchone()
    seconds = (last - start_wall).total_seconds() if last else None
    applied_per_s = succeeded / seconds if seconds else 0.0

    # every credit the load generator had accepted must be in the balance, once
    expected = OPENING_CENTS + sum(amounts[:sent]) if accepted == sent else None
    lost = []
    if accepted != sent:
        lost.append(f"only {accepted} of {sent} credits were accepted: {dict(load.statuses)}")
    if failed:
        lost.append(f"{failed} credit operations failed")
    if expected is not None and balance != expected:
        lost.append(f"lost update: balance {balance} != opening {OPENING_CENTS} + credits sent = {expected}")
    if balance != entries_sum:
        lost.append(f"cached balance {balance} != sum of entries {entries_sum}")
    if entries != succeeded or credited + OPENING_CENTS != balance:
        lost.append(f"{entries} credit entries for {succeeded} succeeded operations (credited {credited})")
    for child in reversed(children):
        child.stop()
    children.clear()
    checked = audit(env)

    ratio = applied_per_s / ceiling["tps"]
    met = ratio >= TARGET_RATIO and not lost
    service = {"sent": sent, "accepted": accepted, "succeeded": succeeded, "failed": failed,
               "seconds": round(seconds, 2) if seconds else None, "applied_per_s": round(applied_per_s, 1),
               "accept_p50_ms": ms(percentile(load.latencies, 0.5)),
               "accept_p99_ms": ms(percentile(load.latencies, 0.99)), "max_attempts": max_attempts,
               "balance_cents": balance, "expected_balance_cents": expected}
    result = {"service": service, "ceiling": ceiling, "ratio": round(ratio, 4), "target_ratio": TARGET_RATIO,
              "lost_updates": lost, "audit": checked, "cpus": os.cpu_count(),
              "config": {k: v for k, v in vars(args).items() if k != "admin_url"},
              "summary": [row("hot account", f"{applied_per_s:.0f} credits applied/s",
                              f"{ceiling['tps']:.0f} tps (pgbench, one row)", ratio, "≥ 0.5×, no lost update",
                              met)]}
    out = write_result("hot_account", result)
    log(f"service: {succeeded} of {sent} credits applied in {service['seconds']} s = {applied_per_s:.1f}/s (accept "
        f"p50 {service['accept_p50_ms']} ms, p99 {service['accept_p99_ms']} ms; max attempts {max_attempts})")
    log(f"ceiling: {ceiling['tps']:.1f} tps on one row; ratio {ratio:.3f}x (target {TARGET_RATIO}x: "
        f"{'met' if ratio >= TARGET_RATIO else 'NOT met'})")
    log(f"balance {balance} = opening + credits sent {expected}: "
        f"{'yes' if not lost else 'NO: ' + '; '.join(lost)}; written to {out}")
    return 0 if not lost and checked["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
