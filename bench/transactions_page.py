"""bench/transactions_page: p50 of GET .../billing/transactions?limit=50 as one account's ledger grows.

Creates a fresh database, starts a private redis-server, the real API and a real worker. Workspace 2's
account gets the smallest of --sizes entries and keeps them: the reference. Workspace 1's account grows to
each of --sizes entries in turn (generate_series inserts that keep the balance chain and the cached
balance exact). At each size it times, one request at a time over a keep-alive connection and alternating
between the two workspaces, the first page and a deep page (a keyset cursor in the middle of the history),
and the grown account's SQL alone (caught in process from the real app, run by pgbench). The figure is the
grown account's p50 over the reference's p50 measured alongside it, at the largest size (target: at most
1.5x); the p50 against the smallest size, measured earlier, is reported too. Ends with `billing audit`.
See bench/README.md.
"""
import argparse
import os
import sys
import time

import psycopg

from bench.harness import (regrant_seeded, Child, SetupError, add_members, audit, capture_sql, fresh_database, log, pgbench_latencies,
                           pgbench_script, row, run_with_children, seed_api_keys, service_env, start_api,
                           start_redis_on, start_worker, timed_requests, user_key, workspace_id, write_result)
from domain.public_ids import PublicIds

TARGET_GROWTH = 1.5
OPENING_CENTS = 1000
ENTRY_CENTS = 10

# Entries first..last of account n, in id order after what is there: each adds ENTRY_CENTS, so entry g's
# balance_after is the opening balance plus g * ENTRY_CENTS, and the cached balance moves by the same.
# Keys are zero-padded so that they arrive in index order. FK triggers are off for the session (the rows
# are valid by construction); nothing else is.
GROW = """
INSERT INTO ledger_entries (billing_account_id, workspace_id, kind, amount_cents, balance_after_cents, description,
                            idempotency_key)
SELECT 'ba_' || md5('a' || %(n)s), 'ws_' || md5('w' || %(n)s), 'credit_grant', {cents}, {opening} + {cents} * g,
       'bench seed', 'seed-' || %(n)s || '-' || lpad(g::text, 12, '0')
FROM generate_series(%(first)s::bigint, %(last)s::bigint) g ORDER BY g;
UPDATE billing_accounts SET balance_cents = {opening} + {cents} * %(last)s WHERE id = 'ba_' || md5('a' || %(n)s)
""".format(cents=ENTRY_CENTS, opening=OPENING_CENTS)
GROWN, REFERENCE = 1, 2  # the workspaces (and accounts) that grow, and that stay at the smallest size


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--database", default="billing_bench_transactions_page")
    p.add_argument("--sizes", default="10000,1000000,10000000",
                   help="ledger entries of the account at each measurement, ascending (default 10k,1M,10M)")
    p.add_argument("--requests", type=int, default=300, help="timed requests per page and size")
    p.add_argument("--pgbench-transactions", type=int, default=1000,
                   help="timed runs of the bare SQL per page and size")
    p.add_argument("--chunk", type=int, default=1_000_000, help="entries per INSERT while growing")
    p.add_argument("--members", type=int, default=20, help="users reading the workspace, each with a key")
    p.add_argument("--api-workers", type=int, default=2)
    p.add_argument("--api-threads", type=int, default=4)
    p.add_argument("--redis-port", type=int, default=6403)
    return p.parse_args()


def main() -> int:
    return run_with_children(run, parse_args())


def grow(url: str, n: int, have: int, want: int, chunk: int) -> float:
    """Append entries until account n has `want` (it has `have`, the opening entry included); seconds."""
    start = time.monotonic()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        for first in range(have, want, chunk):
            last = min(first + chunk - 1, want - 1)
            with conn.transaction():
                for statement in GROW.split(";\n"):
                    conn.execute(statement, {"n": str(n), "first": first, "last": last})
            log(f"  {last + 1:,} entries ({time.monotonic() - start:.0f} s)")
        conn.execute("SET session_replication_role = DEFAULT")
    regrant_seeded(url)  # the grants of the credits written straight into the ledger (the service only reads)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE ledger_entries, grants")  # as autovacuum would, but not while we measure
    return time.monotonic() - start


def middle_cursor(url: str, n: int, entries: int) -> str:
    """A keyset cursor halfway through account n's history (its entries' ids are not contiguous: the
    opening entry comes long before the rest)."""
    with psycopg.connect(url, autocommit=True) as conn:
        middle = conn.execute("SELECT id FROM ledger_entries WHERE billing_account_id = 'ba_' || md5('a' || %s) "
                              "ORDER BY id DESC OFFSET %s LIMIT 1", (str(n), entries // 2)).fetchone()[0]
        key = bytes(conn.execute("SELECT key FROM service_keys WHERE name = 'public_ids'").fetchone()[0])
    return PublicIds(lambda: key).cursor(middle)


def run(args, children: list[Child]) -> int:
    sizes = [int(s) for s in args.sizes.split(",")]
    if sizes != sorted(sizes) or sizes[0] < 200:
        raise SetupError("--sizes must ascend, from at least 200 entries")
    log(f"database {args.database}: workspaces {GROWN} (grows) and {REFERENCE} (stays at {sizes[0]:,} entries), "
        f"read by {args.members} members' keys")
    database_url = fresh_database(args.admin_url, args.database, args.members, OPENING_CENTS)
    seed_api_keys(database_url, args.members)
    for n in (GROWN, REFERENCE):
        add_members(database_url, n, range(1, args.members + 1))
    grow(database_url, REFERENCE, 1, sizes[0], args.chunk)
    redis_url = f"redis://127.0.0.1:{args.redis_port}/0"
    start_redis_on(children, args.redis_port)
    env = service_env(database_url, redis_url)
    start_worker(children, env, "worker", 2, "bench-transactions-page@%h")
    port = start_api(children, env, args.api_workers, args.api_threads)

    keys = [{"Authorization": f"Bearer {user_key(n)}"} for n in range(1, args.members + 1)]
    reference_deep = middle_cursor(database_url, REFERENCE, sizes[0])
    measured, have = [], 1
    for size in sizes:
        log(f"growing workspace {GROWN}'s ledger to {size:,} entries")
        seeding = grow(database_url, GROWN, have, size, args.chunk)
        have = size
        point = {"entries": size, "seeding_seconds": round(seeding, 1)}
        for page, query in (("first", ""), ("deep", "&cursor=" + middle_cursor(database_url, GROWN, size))):
            grown = f"/workspaces/{workspace_id(GROWN)}/billing/transactions?limit=50{query}"
            reference = f"/workspaces/{workspace_id(REFERENCE)}/billing/transactions?limit=50" + (
                query and "&cursor=" + reference_deep)
            requests = [r for headers in keys for r in (("grown", "GET", grown, headers),
                                                        ("reference", "GET", reference, headers))]
            timed_requests(port, requests, 40)  # warm: connections, plans, the pages of the index
            http = timed_requests(port, requests, 2 * args.requests)
            if any(set(stats["statuses"]) != {200} for stats in http.values()):
                raise SetupError(f"{page} page at {size} entries answered "
                                 f"{ {label: stats['statuses'] for label, stats in http.items()} }")
            script = pgbench_script(capture_sql(env, "GET", grown, keys[0]))
            bare = pgbench_latencies(database_url, script, 1, args.pgbench_transactions, f"{page}-{size}")
            ratio = http["grown"]["p50_ms"] / http["reference"]["p50_ms"]
            point[page] = {"http": http["grown"], "reference_http": http["reference"], "bare_sql": bare,
                           "ratio_to_reference": round(ratio, 3)}
            log(f"  {page} page at {size:,}: p50 {http['grown']['p50_ms']} ms (p99 {http['grown']['p99_ms']}), "
                f"alongside {http['reference']['p50_ms']} ms at {sizes[0]:,}: {ratio:.2f}x; "
                f"bare SQL p50 {bare['p50_ms']} ms")
        measured.append(point)
    for child in reversed(children):
        child.stop()
    children.clear()
    checked = audit(env)

    smallest, largest = measured[0], measured[-1]
    pages = ("first", "deep")
    growth = {page: largest[page]["ratio_to_reference"] for page in pages}
    over_time = {page: round(largest[page]["http"]["p50_ms"] / smallest[page]["http"]["p50_ms"], 3) for page in pages}
    summary = [row("transactions page" + ("" if page == "first" else ", deep cursor"),
                   f"p50 {largest[page]['http']['p50_ms']} ms at {largest['entries']:,} entries",
                   f"p50 {largest[page]['reference_http']['p50_ms']} ms at {smallest['entries']:,} (alongside)",
                   growth[page], "≤ 1.5× growth", growth[page] <= TARGET_GROWTH) for page in pages]
    result = {"sizes": measured, "growth": growth, "growth_over_time": over_time, "target_growth": TARGET_GROWTH,
              "audit": checked, "cpus": os.cpu_count(),
              "config": {k: v for k, v in vars(args).items() if k != "admin_url"}, "summary": summary}
    out = write_result("transactions_page", result)
    for page in pages:
        log(f"{page} page at {largest['entries']:,} entries: {growth[page]:.2f}x the p50 at {smallest['entries']:,} "
            f"measured alongside, {over_time[page]:.2f}x the p50 measured at the start (target ≤ {TARGET_GROWTH}x)")
    log(f"written to {out}")
    return 0 if checked["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
