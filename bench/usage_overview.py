"""bench/usage_overview: p95 of GET .../billing/usage-overview over 30 days of usage, beside its bare SQL.

Creates a fresh database whose workspace 1 has --entries usage entries spread over the last 30 days on three
metrics (generate_series inserts keeping the balance chain, the cached balance and the hourly rollups
exact), starts a private redis-server, the real API and a real worker, and times the overview (the
default window, the last 30 days, by day; and by hour), one request at a time over a keep-alive
connection. The same SQL alone, caught in process from the real app, is timed by pgbench; the two are
timed in turn, --rounds times. The figure is the ratio of the two p95s in the median round (target: at
most 1.5x). Ends with `billing audit`. See bench/README.md.
"""
import argparse
import os
import sys
import time

import psycopg

from bench.harness import (regrant_seeded, Child, SetupError, add_members, audit, capture_sql, fresh_database, log, pgbench_latencies,
                           pgbench_script, row, run_with_children, seed_api_keys, service_env, start_api,
                           start_redis_on, start_worker, timed_requests, user_key, workspace_id, write_result)

TARGET_RATIO = 1.5
OPENING_CENTS = 10**12

# Usage events g = first..last of workspace 1, 1 cent each, spread evenly over the last 30 days (minus an
# hour at each end) on three metrics, as domain/store/usage.py would have written them; FK triggers off for
# the session (the rows are valid by construction).
USAGE = """
INSERT INTO ledger_entries (billing_account_id, workspace_id, kind, amount_cents, balance_after_cents, description,
                            reference, idempotency_key, metric, quantity, occurred_at)
SELECT 'ba_' || md5('a1'), 'ws_' || md5('w1'), 'usage', -1, {opening} - g, 'Usage: 10 ' || m.metric,
       'evt-' || lpad(g::text, 12, '0'), 'usage:ws_' || md5('w1') || ':evt-' || lpad(g::text, 12, '0'),
       m.metric, 10, now() - interval '29 days 23 hours' + interval '29 days 22 hours' * (g::float8 / %(total)s)
FROM generate_series(%(first)s::bigint, %(last)s::bigint) g,
     LATERAL (SELECT (ARRAY['tokens', 'requests', 'images'])[1 + g %% 3] AS metric) m
ORDER BY g
""".format(opening=OPENING_CENTS)
ROLLUPS = """
INSERT INTO usage_rollups (billing_account_id, workspace_id, hour, metric, usage_cents, quantity, events)
SELECT billing_account_id, workspace_id, date_trunc('hour', occurred_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC',
       metric, -SUM(amount_cents), SUM(quantity), COUNT(*)
FROM ledger_entries WHERE kind = 'usage' GROUP BY 1, 2, 3, 4
"""


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--database", default="billing_bench_usage_overview")
    p.add_argument("--entries", type=int, default=1_000_000, help="usage entries of the workspace (default 1M)")
    p.add_argument("--requests", type=int, default=300, help="timed requests per granularity")
    p.add_argument("--pgbench-transactions", type=int, default=300, help="timed bare-SQL runs per granularity")
    p.add_argument("--rounds", type=int, default=3, help="the timings alternate HTTP and bare SQL this many times; "
                                                          "the round with the median ratio is reported")
    p.add_argument("--chunk", type=int, default=1_000_000)
    p.add_argument("--members", type=int, default=20, help="users reading the workspace, each with a key")
    p.add_argument("--api-workers", type=int, default=2)
    p.add_argument("--api-threads", type=int, default=4)
    p.add_argument("--redis-port", type=int, default=6404)
    return p.parse_args()


def main() -> int:
    return run_with_children(run, parse_args())


def seed_usage(url: str, total: int, chunk: int) -> float:
    start = time.monotonic()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        for first in range(1, total + 1, chunk):
            with conn.transaction():
                conn.execute(USAGE, {"first": first, "last": min(first + chunk - 1, total), "total": total})
            log(f"  {min(first + chunk - 1, total):,} usage entries ({time.monotonic() - start:.0f} s)")
        with conn.transaction():
            conn.execute(ROLLUPS)
            conn.execute("UPDATE billing_accounts SET balance_cents = balance_cents - %s WHERE id = 'ba_' || md5('a1')",
                         (total,))
        conn.execute("SET session_replication_role = DEFAULT")
        conn.execute("VACUUM ANALYZE")
    return time.monotonic() - start


def run(args, children: list[Child]) -> int:
    log(f"database {args.database}: workspace 1 with {args.entries:,} usage entries over 30 days, read by "
        f"{args.members} members' keys")
    database_url = fresh_database(args.admin_url, args.database, args.members, OPENING_CENTS)
    seed_api_keys(database_url, args.members)
    add_members(database_url, 1, range(2, args.members + 1))
    seeding = seed_usage(database_url, args.entries, args.chunk)
    regrant_seeded(database_url)  # what the seeded usage left of the opening credit's grant
    redis_url = f"redis://127.0.0.1:{args.redis_port}/0"
    start_redis_on(children, args.redis_port)
    env = service_env(database_url, redis_url)
    start_worker(children, env, "worker", 2, "bench-usage-overview@%h")
    port = start_api(children, env, args.api_workers, args.api_threads)

    keys = [{"Authorization": f"Bearer {user_key(n)}"} for n in range(1, args.members + 1)]
    measured = {}
    for granularity in ("day", "hour"):
        path = f"/workspaces/{workspace_id(1)}/billing/usage-overview?granularity={granularity}"
        requests = [("overview", "GET", path, headers) for headers in keys]
        script = pgbench_script(capture_sql(env, "GET", path, keys[0]))
        timed_requests(port, requests, 20)  # warm: connections, plans, pages
        rounds = []
        for n in range(args.rounds):  # HTTP and bare SQL in turn, so that a drift of the machine hits both
            http = timed_requests(port, requests, args.requests // args.rounds)["overview"]
            if set(http["statuses"]) != {200}:
                raise SetupError(f"the overview by {granularity} answered {http['statuses']}")
            bare = pgbench_latencies(database_url, script, 1, args.pgbench_transactions // args.rounds,
                                     f"{granularity}-{n}")
            rounds.append({"http": http, "bare_sql": bare, "ratio": round(http["p95_ms"] / bare["p95_ms"], 3)})
            log(f"by {granularity}, round {n + 1}: p50 {http['p50_ms']} ms, p95 {http['p95_ms']} ms; bare SQL p50 "
                f"{bare['p50_ms']} ms, p95 {bare['p95_ms']} ms; ratio of p95s {rounds[-1]['ratio']}x")
        middle = sorted(rounds, key=lambda r: r["ratio"])[len(rounds) // 2]  # the round with the median ratio
        measured[granularity] = middle | {"rounds": rounds}
    for child in reversed(children):
        child.stop()
    children.clear()
    checked = audit(env)

    day = measured["day"]
    summary = [row("usage overview", f"p95 {day['http']['p95_ms']} ms (30 days by day, {args.entries:,} entries)",
                   f"p95 {day['bare_sql']['p95_ms']} ms (bare SQL)", day["ratio"], "≤ 1.5× the bare SQL",
                   day["ratio"] <= TARGET_RATIO)]
    result = {"entries": args.entries, "seeding_seconds": round(seeding, 1), "by": measured, "ratio": day["ratio"],
              "target_ratio": TARGET_RATIO, "audit": checked, "cpus": os.cpu_count(),
              "config": {k: v for k, v in vars(args).items() if k != "admin_url"}, "summary": summary}
    out = write_result("usage_overview", result)
    log(f"p95 over 30 days by day: {day['ratio']}x the bare SQL (target ≤ {TARGET_RATIO}x); written to {out}")
    return 0 if checked["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
