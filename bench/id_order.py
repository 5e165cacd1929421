"""bench/id_order: what a hold creation writes to the WAL with random ids and with the service's time-ordered ids.

One database with the service's schema and `--holds` past holds (settled, random ids, spread over 200 workspaces),
vacuumed. Then, in turn for each kind of id, `--rounds` times: CHECKPOINT, and `--inserts` hold creations from
`--clients` threads, each the service's own statement (domain.store.holds.RESERVE, one per autocommit round trip)
with an id made as uuid4 made them (random) or as domain.ids.new_id makes them (the millisecond clock first). Per
creation: WAL bytes (from the WAL's position) and full-page images (pg_stat_wal, read once every backend reported).
A checkpoint makes the next change of each page write the whole page: an insert that lands on a random page of an
index larger than what the inserts since the checkpoint touched writes a page, one that lands beside the last
insert does not. No target: it shows why ids start with the clock (domain/ids.py).
"""
import argparse
import sys
import threading
import time
import uuid

import psycopg

from bench.harness import fresh_database, log, workspace_id, write_result
from domain.ids import new_id
from domain.store.holds import RESERVE

KINDS = {"random (uuid4)": lambda: f"hold_{uuid.uuid4().hex}",
         "time-ordered (domain.ids.new_id)": lambda: new_id("hold")}
STATS_REPORTED = 11  # s: an idle backend reports its statistics (pg_stat_wal) within 10 s


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--database", default="billing_bench_id_order")
    p.add_argument("--holds", type=int, default=2_000_000, help="past holds in the table before the inserts")
    p.add_argument("--inserts", type=int, default=40_000, help="hold creations per kind of id and round")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2)
    return p.parse_args()


PAST_HOLDS = """
INSERT INTO holds (billing_account_id, id, workspace_id, amount_cents, captured_cents, status, expires_at,
                   created_by, created_at, settled_at)
SELECT w.default_billing_account_id, 'hold_' || md5(random()::text), w.id, 100, 100, 'captured',
       now() - make_interval(secs => g), 'operator', now() - make_interval(secs => g + 60),
       now() - make_interval(secs => g)
FROM generate_series(1, %(holds)s) g JOIN workspaces w ON w.id = 'ws_' || md5('w' || (g %% 200 + 1))
"""


def create_holds(url: str, make_id, count: int, clients: int) -> float:
    """`count` hold creations from `clients` connections; seconds taken. A client's failure fails the bench."""
    left = iter(range(count))
    lock = threading.Lock()
    failures: list[Exception] = []

    def client() -> None:
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                while True:
                    with lock:
                        n = next(left, None)
                    if n is None:
                        return
                    row = conn.execute(RESERVE, {
                        "id": make_id(), "workspace_id": workspace_id(n % 200 + 1), "amount": 100, "seconds": 3600,
                        "description": "", "reference": None, "created_by": "operator", "scope": None},
                        prepare=True).fetchone()
                    if row is None:
                        raise RuntimeError("a hold was refused")
        except Exception as exc:  # handed to the main thread, which raises it
            failures.append(exc)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise failures[0]
    return time.monotonic() - started


def main() -> int:
    args = parse_args()
    url = fresh_database(args.admin_url, args.database, 200, 10**12)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(PAST_HOLDS, {"holds": args.holds})
        conn.execute("VACUUM ANALYZE holds")
        size = conn.execute("SELECT pg_indexes_size('holds')").fetchone()[0]
    log(f"{args.holds} past holds; the holds' indexes {size / 2**20:.0f} MB")
    runs = []
    for r in range(args.rounds):
        for kind, make_id in KINDS.items():
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("CHECKPOINT")
                time.sleep(STATS_REPORTED)
                lsn = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
                fpi = conn.execute("SELECT wal_fpi FROM pg_stat_wal").fetchone()[0]
                seconds = create_holds(url, make_id, args.inserts, args.clients)
                time.sleep(STATS_REPORTED)
                wal = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (lsn,)).fetchone()[0]
                fpi = conn.execute("SELECT wal_fpi FROM pg_stat_wal").fetchone()[0] - fpi
            run = {"round": r + 1, "ids": kind, "inserts_per_s": round(args.inserts / seconds),
                   "wal_bytes_per_insert": round(float(wal) / args.inserts),
                   "full_page_images_per_insert": round(fpi / args.inserts, 3)}
            log(f"  {kind}: {run}")
            runs.append(run)
    path = write_result("id_order", {"runs": runs, "indexes_mb": round(size / 2**20),
                                     "config": {k: v for k, v in vars(args).items() if k != "admin_url"}})
    with psycopg.connect(args.admin_url, autocommit=True) as conn:  # 2 GB: not kept on the server
        conn.execute(f'DROP DATABASE "{args.database}" WITH (FORCE)')
    log(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
