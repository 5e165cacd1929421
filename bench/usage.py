"""bench/usage: usage events debited per second through POST .../billing/usage (batches of 100) and the worker.

Creates a fresh database (workspaces with a large balance), runs the raw PostgreSQL ceiling first (pgbench:
the same statements the ledger task runs per batch -- the workspace lock, the account lock, the lookup of
the batch's keys, one INSERT of its usage entries, the hourly rollup and the balance move, one transaction
-- on other accounts of the same tables), then starts a private redis-server, the real API and a real
worker, posts --batches batches of --batch-size events from --clients clients (issue 14: 100 events, 4
clients), waits until every operation succeeded, checks the ledger, and prints events/s end to end beside
the ceiling's. See bench/README.md.
"""
import argparse
import itertools
import json
import os
import secrets
import sys
import threading
import time
from datetime import UTC, datetime

import psycopg

from bench.harness import (Child, Load, SetupError, fresh_database, log, percentile, row, run_pgbench,
                           run_with_children, start_api, start_redis, workspace_id, write_result)

TARGET_RATIO = 0.5

# One ledger task's SQL for one batch (domain/store/usage.py: entries, rollup, balance; grants.py: the draw;
# spend.py: the month's spending), with generated keys on ceiling accounts.
PGBENCH_BATCH = """\\set w random({first}, {last})
\\set r random(1, 1000000000000)
BEGIN;
SELECT pg_advisory_xact_lock(hashtextextended('usage:' || 'ws_' || md5('w' || :w), 0));
SELECT balance_cents FROM billing_accounts WHERE id = 'ba_' || md5('a' || :w) FOR NO KEY UPDATE;
SELECT idempotency_key FROM ledger_entries
WHERE billing_account_id = ANY(ARRAY(SELECT billing_account_id FROM workspace_billing_accounts
                                     WHERE workspace_id = 'ws_' || md5('w' || :w) UNION SELECT 'ba_' || md5('a' || :w)))
  AND idempotency_key = ANY(ARRAY(
    SELECT 'ceiling:' || :client_id || ':' || :r || ':' || g FROM generate_series(1, {batch}) g));
WITH a AS (SELECT balance_cents FROM billing_accounts WHERE id = 'ba_' || md5('a' || :w)),
inserted AS (
    INSERT INTO ledger_entries (billing_account_id, workspace_id, kind, amount_cents, balance_after_cents,
                                description, reference, idempotency_key, metric, quantity, occurred_at)
    SELECT 'ba_' || md5('a' || :w), 'ws_' || md5('w' || :w), 'usage', -1, a.balance_cents - g,
           'Usage: 100 tokens', 'evt-' || g, 'ceiling:' || :client_id || ':' || :r || ':' || g, 'tokens', 100, now()
    FROM a, generate_series(1, {batch}) g ORDER BY g
    RETURNING id, amount_cents, metric, quantity, occurred_at
), rolled AS (
    INSERT INTO usage_rollups AS r (billing_account_id, workspace_id, hour, metric, usage_cents, quantity, events)
    SELECT 'ba_' || md5('a' || :w), 'ws_' || md5('w' || :w),
           date_trunc('hour', occurred_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', metric,
           -SUM(amount_cents), SUM(quantity), COUNT(*)
    FROM inserted GROUP BY 3, 4
    ON CONFLICT (billing_account_id, workspace_id, hour, metric) DO UPDATE SET usage_cents = r.usage_cents + EXCLUDED.usage_cents,
        quantity = r.quantity + EXCLUDED.quantity, events = r.events + EXCLUDED.events
), moved AS (
    UPDATE billing_accounts SET balance_cents = balance_cents + (SELECT SUM(amount_cents) FROM inserted)
    WHERE id = 'ba_' || md5('a' || :w) RETURNING balance_cents
)
SELECT count(*) AS n, max(id) AS last_id, (SELECT balance_cents FROM moved) AS balance FROM inserted \\gset u_
WITH ordered AS (
    SELECT id, remaining_cents,
           SUM(remaining_cents) OVER (ORDER BY priority, expires_at, entry_id ROWS UNBOUNDED PRECEDING)
           - remaining_cents AS before
    FROM grants WHERE billing_account_id = 'ba_' || md5('a' || :w) AND status = 'active'
), taken AS (
    SELECT id, LEAST(remaining_cents, {batch} - before) AS cents FROM ordered WHERE before < {batch}
), drawn AS (
    UPDATE grants g SET remaining_cents = g.remaining_cents - t.cents,
           status = CASE WHEN g.remaining_cents = t.cents THEN 'depleted' ELSE 'active' END,
           closed_entry_id = CASE WHEN g.remaining_cents = t.cents THEN CAST(:u_last_id AS bigint) END
    FROM taken t WHERE g.billing_account_id = 'ba_' || md5('a' || :w) AND g.id = t.id
    RETURNING g.id, t.cents, g.remaining_cents
)
INSERT INTO grant_draws (billing_account_id, grant_id, entry_id, amount_cents, remaining_after_cents)
SELECT 'ba_' || md5('a' || :w), id, CAST(:u_last_id AS bigint), cents, remaining_cents FROM drawn;
INSERT INTO workspace_spend AS s (workspace_id, month, spent_cents)
VALUES ('ws_' || md5('w' || :w), date_trunc('month', now() AT TIME ZONE 'UTC')::date, {batch})
ON CONFLICT (workspace_id, month) DO UPDATE SET spent_cents = s.spent_cents + EXCLUDED.spent_cents;
END;
"""

CHECK = """
SELECT count(*) FILTER (WHERE status = 'succeeded'), count(*) FILTER (WHERE status = 'failed'),
       max(updated_at) FROM operations WHERE kind = 'usage'
"""
AUDIT = """
SELECT count(*) FROM billing_accounts a
WHERE a.balance_cents <> (SELECT COALESCE(SUM(amount_cents), 0) FROM ledger_entries e WHERE e.billing_account_id = a.id)
"""


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--database", default="billing_bench_usage")
    p.add_argument("--workspaces", type=int, default=8)
    p.add_argument("--batches", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=100, help="events per request, and per pgbench transaction")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--concurrency", type=int, default=2, help="worker processes")
    p.add_argument("--pgbench-clients", type=int, help="clients of the ceiling (default: --clients, the batches in "
                                                        "flight)")
    p.add_argument("--pgbench-seconds", type=int, default=15)
    p.add_argument("--api-workers", type=int, default=2)
    p.add_argument("--api-threads", type=int, default=4)
    return p.parse_args()


def main() -> int:
    return run_with_children(run, parse_args())


def batches(args) -> list[tuple[str, str]]:
    """(path, body) of every batch: unique eventIds, workspaces in turn."""
    now = datetime.now(UTC).isoformat()
    out = []
    for b in range(args.batches):
        events = [{"eventId": f"b{b}-e{i}", "metric": "tokens", "quantity": 100, "amountCents": 1, "occurredAt": now}
                  for i in range(args.batch_size)]
        out.append((f"/workspaces/{workspace_id(b % args.workspaces + 1)}/billing/usage",
                    json.dumps({"events": events})))
    return out


def run(args, children: list[Child]) -> int:
    w = args.workspaces
    log(f"database {args.database}: {2 * w} workspaces ({w} for the service, {w} for the ceiling)")
    database_url = fresh_database(args.admin_url, args.database, 2 * w, 10**12)
    ceiling = run_pgbench(database_url, PGBENCH_BATCH.format(first=w + 1, last=2 * w, batch=args.batch_size),
                          args.pgbench_clients or args.clients, args.pgbench_seconds, "usage-batch")
    ceiling["events_per_s"] = round(ceiling["tps"] * args.batch_size, 1)
    ceiling["batch_size"] = args.batch_size
    log(f"ceiling: {ceiling['tps']:.1f} batches/s = {ceiling['events_per_s']:.0f} events/s")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE ledger_entries, billing_accounts")

    redis_url, _ = start_redis(children)
    token = f"bench-{secrets.token_urlsafe(16)}"
    env = {k: v for k, v in os.environ.items() if k not in ("CELERY_BROKER_URL", "BENCH_NO_REEXEC")}
    env.update(DATABASE_URL=database_url, REDIS_URL=redis_url, BILLING_OPERATOR_TOKEN=token, PYTHONUNBUFFERED="1")
    from worker.cli import ALL_QUEUES, worker_argv

    worker = Child("worker", worker_argv(ALL_QUEUES, args.concurrency, name=f"bench-{token[-6:]}@%h"), env)
    children.append(worker)
    port = start_api(children, env, args.api_workers, args.api_threads)
    worker.wait_for(lambda: " ready." in worker.text(), 60, "the worker")

    jobs, lock = iter(batches(args)), threading.Lock()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def next_request():
        with lock:
            job = next(jobs, None)
        return None if job is None else (job[0], job[1], headers)
    log(f"posting {args.batches} batches of {args.batch_size} events from {args.clients} clients; worker concurrency "
        f"{args.concurrency}")
    start_wall = datetime.now(UTC)
    load = Load(port, args.clients, next_request, time.monotonic() + 600)
    load.run()
    accepted = load.statuses.get(202, 0)
    if accepted != args.batches:
        raise SetupError(f"only {accepted} of {args.batches} batches accepted: {dict(load.statuses)}")
    with psycopg.connect(database_url, autocommit=True) as conn:
        for _ in itertools.count():
            succeeded, failed, last = conn.execute(CHECK).fetchone()
            if succeeded + failed >= accepted:
                break
            time.sleep(0.2)
        debited = conn.execute("SELECT count(*) FROM ledger_entries WHERE kind = 'usage' "
                               "AND idempotency_key NOT LIKE 'ceiling:%'").fetchone()[0]
        broken = conn.execute(AUDIT).fetchone()[0]
    seconds = (last - start_wall).total_seconds()
    service = {"batches": accepted, "events": args.batches * args.batch_size, "debited": debited, "failed": failed,
               "seconds": round(seconds, 2), "events_per_s": round(debited / seconds, 1),
               "accept_seconds": round(load.finished - load.started, 2),
               "accept_p50_ms": round(percentile(load.latencies, 0.5) * 1000, 1),
               "accept_p99_ms": round(percentile(load.latencies, 0.99) * 1000, 1)}
    ratio = service["events_per_s"] / ceiling["events_per_s"]
    ok = debited == service["events"] and not failed and not broken
    summary = [row(f"usage (batches of {args.batch_size}, {args.clients} clients)",
                   f"{service['events_per_s']:.0f} events debited/s",
                   f"{ceiling['events_per_s']:.0f} events/s (pgbench: the task's SQL per batch, "
                   f"-c {ceiling['clients']})",
                   ratio, f"≥ {TARGET_RATIO}×", ratio >= TARGET_RATIO and ok)]
    path = write_result("usage", {"service": service, "ceiling": ceiling, "ratio": round(ratio, 4),
                                  "target_ratio": TARGET_RATIO, "cpus": os.cpu_count(),
                                  "accounts_out_of_balance": broken, "summary": summary,
                                  "config": {k: v for k, v in vars(args).items() if k != "admin_url"}})
    log(f"service: {debited} of {service['events']} events debited in {seconds:.1f} s = {service['events_per_s']:.0f} "
        f"events/s ({failed} failed operations); accept p50 {service['accept_p50_ms']} ms, p99 "
        f"{service['accept_p99_ms']} ms per batch")
    log(f"ceiling: {ceiling['events_per_s']:.0f} events/s; ratio {ratio:.3f}x; accounts out of balance: {broken}; "
        f"written to {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
