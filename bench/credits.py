"""bench/credits: POST /workspaces/{id}/billing/credits at 10,000 accounts, end to end.

Creates a fresh database, migrates it, seeds users/accounts/workspaces (with real intro-credit ledger
entries), measures the raw PostgreSQL ceilings with pgbench on the same table shapes (issue 14's: the
accept and the apply, two transactions per credit, bench/two_commits.py; issue 9's: one transaction per
credit), starts the real API (granian, worker.cli.api_argv) and a real Celery worker
(worker.cli.worker_argv) on a private redis-server, drives the credits endpoint from a keep-alive load
generator (after --warmup credits posted and applied, not counted), waits until every operation succeeded,
reports accepted/s, applied/s, accept-to-applied p50/p99 and applied/s as a ratio of each ceiling, then runs the
services audit. Exit 1 when an invariant broke (or not every accepted credit was applied), 2 on a set-up failure.
See bench/README.md.
"""
import argparse
import http.client
import itertools
import json
import os
import random
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlparse

import psycopg

from bench.harness import (CLK_TCK, LOGS, RESULTS, ROOT, Child, SetupError, credit_ceiling, fresh_database, log, ms,
                           percentile, port_is_free, service_env, start_api, start_redis_on, start_worker, wait_until,
                           workspace_id, write_json)
from bench.two_commits import two_commit_ceiling

TARGET_RATIO = 0.5  # issue 14: of the two-commit ceiling (accept, then apply); 1.0 is its moonshot
MOONSHOT_RATIO = 1.0

# harness.fresh_database's seed with the intro credit as provision_default_account posts it: one real entry per
# account. Ids look like the ones domain.ids.new_id issues ("<prefix>_" + 32 hex), derived from n so that the
# pgbench script can name account n without a lookup.
INTRO_SEED = """
INSERT INTO users (id, email, name)
SELECT 'usr_' || md5('u' || n), 'bench-' || n || '@example.com', 'Bench ' || n
FROM generate_series(1, %(n)s) n;

INSERT INTO billing_accounts (id, owner_user_id, name, balance_cents, is_user_default)
SELECT 'ba_' || md5('a' || n), 'usr_' || md5('u' || n), 'Default', %(cents)s, true
FROM generate_series(1, %(n)s) n;

INSERT INTO ledger_entries (billing_account_id, kind, amount_cents, balance_after_cents, description,
                            idempotency_key)
SELECT 'ba_' || md5('a' || n), 'intro_credit', %(cents)s, %(cents)s, 'Introductory credit',
       'intro:usr_' || md5('u' || n)
FROM generate_series(1, %(n)s) n WHERE %(cents)s > 0;

INSERT INTO workspaces (id, name, owner_user_id, default_billing_account_id)
SELECT 'ws_' || md5('w' || n), 'Bench ' || n, 'usr_' || md5('u' || n), 'ba_' || md5('a' || n)
FROM generate_series(1, %(n)s) n;

INSERT INTO workspace_billing_accounts (workspace_id, billing_account_id)
SELECT 'ws_' || md5('w' || n), 'ba_' || md5('a' || n) FROM generate_series(1, %(n)s) n;

INSERT INTO workspace_members (workspace_id, user_id, role)
SELECT 'ws_' || md5('w' || n), 'usr_' || md5('u' || n), 'owner' FROM generate_series(1, %(n)s) n
"""


# --------------------------------------------------------------------------------------------------
# CPU accounting


def _proc_table() -> dict[int, tuple[int, float, str]]:
    """pid -> (ppid, cpu seconds, cmdline) for every readable process."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        table[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK_TCK, cmd)
    return table


def _machine_busy() -> tuple[float, float]:
    """(busy seconds, total seconds) over all CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + parts[4]
    return (sum(parts) - idle) / CLK_TCK, sum(parts) / CLK_TCK


class CpuMeter:
    """CPU seconds per component between two samples (a process that exits in between is not counted).

    roots: name -> pid whose whole process tree is counted; "loadgen" is this process alone (its children
    are the servers measured separately). PostgreSQL counts the postmaster's own processes (WAL writer,
    checkpointer, ...) and the backends of our database, not other databases' backends.
    """

    def __init__(self, roots: dict[str, int], dbname: str, postmaster: int | None) -> None:
        self.roots, self.dbname, self.postmaster = roots, dbname, postmaster

    def sample(self) -> dict[str, float]:
        table = _proc_table()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        out = {}
        for name, root in self.roots.items():
            if name == "loadgen":
                out[name] = table[root][1] if root in table else 0.0
                continue
            total, stack = 0.0, [root]
            while stack:
                pid = stack.pop()
                if pid in table:
                    total += table[pid][1]
                    stack.extend(children.get(pid, []))
            out[name] = total
        pg = 0.0
        if self.postmaster in table:
            pg = table[self.postmaster][1]
            for pid in children.get(self.postmaster, []):
                cmd = table[pid][2]
                is_backend = re.search(r"\d+\.\d+\.\d+\.\d+\(\d+\)|\[local\]", cmd)
                if not is_backend or f" {self.dbname} " in cmd:
                    pg += table[pid][1]
        out["postgres"] = pg
        out["_machine_busy"], out["_machine_total"] = _machine_busy()
        return out

    @staticmethod
    def diff(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
        wall_cpus = b["_machine_total"] - a["_machine_total"]  # CPU-seconds available (all cores)
        ncpu = os.cpu_count() or 1
        wall = wall_cpus / ncpu
        shares = {k: round(100 * (b[k] - a[k]) / wall, 1) for k in a if not k.startswith("_") and wall > 0}
        busy = round(100 * (b["_machine_busy"] - a["_machine_busy"]) / wall, 1) if wall > 0 else 0.0
        shares["machine_busy"] = busy
        shares["other"] = round(busy - sum(v for k, v in shares.items() if k not in ("machine_busy",)), 1)
        shares["capacity"] = 100 * ncpu
        shares["wall_seconds"] = round(wall, 3)
        return shares

    @staticmethod
    def seconds(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
        return {k: b[k] - a.get(k, b[k]) for k in b if not k.startswith("_")}


# --------------------------------------------------------------------------------------------------
# Database counters


def pg_counters(url: str, dbname: str) -> dict:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT xact_commit, xact_rollback, tup_inserted, tup_updated, tup_fetched "
                           "FROM pg_stat_database WHERE datname = %s", (dbname,)).fetchone()
        wal = conn.execute("SELECT wal_records, wal_bytes, wal_write, wal_sync FROM pg_stat_wal").fetchone()
    keys = ("xact_commit", "xact_rollback", "tup_inserted", "tup_updated", "tup_fetched")
    return {**dict(zip(keys, map(int, row))),
            **dict(zip(("wal_records", "wal_bytes", "wal_write", "wal_sync"), map(int, wal)))}


def postmaster_pid(url: str) -> int | None:
    """The server's postmaster, when it runs on this machine (the parent of our backend)."""
    with psycopg.connect(url, autocommit=True) as conn:
        backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        try:
            with open(f"/proc/{backend}/stat") as f:
                stat = f.read()
        except OSError:
            return None
        return int(stat[stat.rfind(")") + 2:].split()[1])


# --------------------------------------------------------------------------------------------------
# Load generator


class CreditLoad:
    """Closed-loop HTTP/1.1 keep-alive clients posting credits until the count or the time is used up.

    Unlike harness.Load it records each 202 as it comes (the progress lines read it) with its wall time."""

    def __init__(self, port: int, token: str, jobs: list[tuple[str, int, str]], clients: int,
                 deadline: float, use_idempotency_key: bool) -> None:
        self.port, self.token, self.jobs = port, token, jobs
        self.clients, self.deadline, self.use_key = clients, deadline, use_idempotency_key
        self._next = itertools.count()
        self.lock = threading.Lock()
        self.accepted: list[tuple[str, float]] = []  # (operation id, wall time of the 202)
        self.latencies: list[float] = []
        self.errors: Counter = Counter()
        self.first_send: float | None = None
        self.last_accept: float | None = None
        self.first_accept_wall: float | None = None
        self.sent = 0

    def span(self) -> float:
        """Seconds from the first request sent to the last 202."""
        return (self.last_accept - self.first_send) if self.accepted else 0.0

    def _connect(self) -> http.client.HTTPConnection:
        while True:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                conn.connect()
            except OSError as exc:
                with self.lock:
                    self.errors[f"connect {type(exc).__name__}"] += 1
                if time.monotonic() >= self.deadline:
                    return conn
                time.sleep(0.1)
                continue
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return conn

    def _client(self) -> None:
        conn = self._connect()
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        while True:
            i = next(self._next)
            if i >= len(self.jobs) or time.monotonic() >= self.deadline:
                break
            conn = self._post(conn, headers, *self.jobs[i])
        conn.close()

    def _post(self, conn: http.client.HTTPConnection, headers: dict, workspace: str, amount: int,
              key: str) -> http.client.HTTPConnection:
        """One credit; the connection to go on with (a new one after an error, or when the server closes)."""
        body = json.dumps({"amountCents": amount, "description": "bench credit"})
        if self.use_key:
            headers["Idempotency-Key"] = key
        start = time.monotonic()
        with self.lock:
            self.sent += 1
            if self.first_send is None:
                self.first_send = start
        try:
            conn.request("POST", f"/workspaces/{workspace}/billing/credits", body, headers)
            resp = conn.getresponse()
            payload = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            with self.lock:
                self.errors[type(exc).__name__] += 1
            conn.close()
            return self._connect()
        self._record(resp.status, payload, start)
        if resp.will_close:
            conn.close()
            return self._connect()
        return conn

    def _record(self, status: int, payload: bytes, start: float) -> None:
        end, wall = time.monotonic(), time.time()
        if status != 202:
            with self.lock:
                self.errors[f"http {status}"] += 1
                if self.errors[f"http {status}"] <= 3:
                    log(f"  unexpected {status}: {payload[:300]!r}")
            return
        op_id = json.loads(payload)["id"]
        with self.lock:
            self.accepted.append((op_id, wall))
            self.latencies.append(end - start)
            self.last_accept = end
            if self.first_accept_wall is None or wall < self.first_accept_wall:
                self.first_accept_wall = wall

    def run(self) -> None:
        threads = [threading.Thread(target=self._client, daemon=True) for _ in range(self.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


class Poller:
    """Polls the operations table until every accepted operation is finished."""

    QUERY = ("SELECT count(*) FILTER (WHERE status = 'succeeded'), count(*) FILTER (WHERE status = 'failed'), "
             "count(*) FROM operations WHERE kind = 'credit' AND created_at >= %s")

    def __init__(self, url: str, interval: float) -> None:
        self.conn = psycopg.connect(url, autocommit=True)
        self.interval = interval
        self.polls = 0
        self.since = datetime(1970, 1, 1, tzinfo=UTC)  # the measured operations: created from then on

    def counts(self) -> tuple[int, int, int]:
        self.polls += 1
        return self.conn.execute(self.QUERY, (self.since,)).fetchone()

    def measure_from_now(self) -> None:
        self.since = self.conn.execute("SELECT now()").fetchone()[0]

    def close(self) -> None:
        self.conn.close()


# --------------------------------------------------------------------------------------------------
# py-spy (optional): sample the worker and the API while the load runs


def start_py_spy(binary: str, pid: int, name: str, rate: int, mode: str) -> subprocess.Popen:
    """py-spy record of a process tree; mode "cpu" (py-spy's default: threads not idle), "gil" (only the
    thread holding the GIL: Python CPU time) or "wall" (--idle: every thread, waiting included)."""
    out = RESULTS / f"pyspy-{name}.txt"
    argv = [binary, "record", "--pid", str(pid), "--subprocesses", "--format", "raw", "--rate", str(rate),
            "--output", str(out), "--nonblocking"]
    argv += {"cpu": [], "gil": ["--gil"], "wall": ["--idle"]}[mode]
    return subprocess.Popen(argv, stdout=open(LOGS / f"pyspy-{name}.log", "wb"), stderr=subprocess.STDOUT)


def stop_py_spy(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
PROJECT_DIRS = ("domain", "api", "tasks", "worker")


def _frame_keys(frame: str) -> list[str]:
    """"[package]" of a frame, and "function (file)" when the file is the project's."""
    m = _FRAME.match(frame)
    if not m:
        return []
    file = m.group("file")
    top_dir = file.split("/", 1)[0] if "/" in file else file
    keys = [f"[{top_dir}]"] if not top_dir.startswith("<") and top_dir not in ("click", "runpy.py") else []
    if top_dir in PROJECT_DIRS:
        keys.append(f"{m.group('func')} ({file})")
    return keys


def summarize_py_spy(path: Path, top: int = 15) -> dict:
    """From py-spy's raw (collapsed) output: the share of samples per process role (1 = the root process,
    e.g. Celery's consumer or granian's main process; 2 = its children: pool workers), per package, per
    project function (inclusive) and per leaf frame (self)."""
    if not path.exists():
        return {}
    total = 0
    roles: Counter = Counter()
    packages: Counter = Counter()
    project: Counter = Counter()
    leaf: Counter = Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        roles["root process" if sum(f.startswith("process ") for f in frames) <= 1 else "child processes"] += n
        for key in dict.fromkeys(key for frame in frames for key in _frame_keys(frame)):  # once per stack
            (project if not key.startswith("[") else packages)[key] += n
        m = _FRAME.match(frames[-1]) if frames else None
        leaf[f"{m.group('func')} ({m.group('file')})" if m else frames[-1][:100]] += n

    def pct(counter: Counter, k: int) -> dict:
        return {key: round(100 * v / total, 1) for key, v in counter.most_common(k)} if total else {}

    return {"samples": total, "roles_pct": pct(roles, 2), "packages_pct": pct(packages, top),
            "project_inclusive_pct": pct(project, top * 2), "self_pct": pct(leaf, top)}


# --------------------------------------------------------------------------------------------------
# The run


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/credits", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--credits", type=int, default=5000, help="credits to post (default 5000)")
    p.add_argument("--seconds", type=float, default=120,
                   help="stop posting after this many seconds even if --credits were not all sent (default 120)")
    p.add_argument("--concurrency", type=int, default=2,
                   help="Celery worker processes, and pgbench clients for the one-transaction ceiling (default 2)")
    p.add_argument("--clients", type=int, default=8, help="load-generator keep-alive connections (default 8)")
    p.add_argument("--warmup", type=int, default=500, help="credits posted and applied before the measured ones and "
                   "not counted: the first requests' and postings' one-time costs (imports, pools, prepared "
                   "statements, cold pages) out of the figure (default 500; concurrent mode only)")
    p.add_argument("--api-workers", type=int, default=2, help="API worker processes (default 2)")
    p.add_argument("--api-threads", type=int, default=4, help="API threads per worker process (default 4)")
    p.add_argument("--accounts", type=int, default=10_000, help="users/accounts/workspaces (default 10000)")
    p.add_argument("--no-idempotency-key", action="store_true",
                   help="send credits without an Idempotency-Key header (default: one unique key each)")
    p.add_argument("--mode", choices=("concurrent", "phased"), default="concurrent",
                   help="concurrent: the worker applies while the API accepts (default); phased: accept "
                        "everything first, then start the worker and time the drain alone")
    p.add_argument("--pgbench-seconds", type=int, default=15, help="duration of each ceiling run (default 15)")
    p.add_argument("--skip-ceiling", action="store_true", help="do not run pgbench (ratio not reported)")
    p.add_argument("--two-commit-clients", type=int,
                   help="pgbench clients of the two-commit ceiling (default: --clients, the credits in flight)")
    p.add_argument("--drain-timeout", type=float, default=600,
                   help="seconds to wait for every accepted credit to be applied (default 600)")
    p.add_argument("--poll-interval", type=float, default=0.05)
    p.add_argument("--database", default="billing_bench", help="database to (re)create (default billing_bench)")
    p.add_argument("--admin-url", default=os.environ.get("BENCH_ADMIN_URL",
                                                         "postgresql://postgres@127.0.0.1:5432/postgres"),
                   help="a superuser URL on the server (default postgresql://postgres@127.0.0.1:5432/postgres)")
    p.add_argument("--redis-url", help="use this Redis (e.g. redis://127.0.0.1:6379/13, a DB of your own; it is "
                   "FLUSHDB'ed) instead of starting a private redis-server")
    p.add_argument("--redis-port", type=int, default=6391, help="port of the private redis-server (default 6391)")
    p.add_argument("--seed", type=int, default=1, help="random seed for workspaces and amounts")
    p.add_argument("--py-spy", metavar="PATH", help="py-spy binary: profile the worker and the API during the load "
                   "(raw stacks in bench/results/pyspy-*.txt; it slows the run, so figures are not comparable)")
    p.add_argument("--py-spy-mode", choices=("cpu", "gil", "wall"), default="gil",
                   help="with --py-spy: gil = Python CPU time (default), cpu = py-spy's default (non-idle "
                        "threads), wall = every thread including waits (--idle)")
    p.add_argument("--py-spy-rate", type=int, default=100)
    p.add_argument("--output", default=str(RESULTS / "credits.json"))
    p.add_argument("--fail-below-target", action="store_true",
                   help="also exit 1 when applied/s is below 0.5x the two-commit ceiling")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    LOGS.mkdir(parents=True, exist_ok=True)
    children: list[Child] = []
    spies: list[subprocess.Popen] = []
    try:
        return run(args, children, spies)
    except SetupError as exc:
        log(f"set-up failed: {exc}")
        return 2
    finally:
        for spy in spies:
            stop_py_spy(spy)
        for child in reversed(children):
            child.stop()


@dataclass
class Service:
    """The database, Redis, API and worker of one run, and what the JSON records of them."""
    env: dict
    settings: object
    server: dict  # the PostgreSQL settings the figures depend on
    redis: Child | None  # the private redis-server, when there is one
    redis_version: str | None
    hostname: str  # the worker's, unique to the run
    api: Child | None = None
    port: int = 0
    api_argv: list[str] = field(default_factory=list)
    worker: Child | None = None
    worker_argv: list[str] = field(default_factory=list)

    @property
    def database_url(self) -> str:
        return self.env["DATABASE_URL"]


@dataclass
class Clock:
    """CPU samples at the edges of the phases, the server's counters around them, and the wall times the
    rates are measured from."""
    meter: CpuMeter
    pg_before: dict
    start: dict
    accept_end: dict | None = None
    drain_start: dict | None = None  # = accept_end, but in phased mode: when the worker started
    end: dict | None = None
    drain_start_wall: float | None = None
    done_wall: float | None = None
    pg_after: dict | None = None
    polls: int = 0  # the poller's own commits, subtracted from the service's


def run(args, children: list[Child], spies: list[subprocess.Popen]) -> int:
    run_id = secrets.token_hex(4)
    service = prepare(args, children, run_id)
    ceiling = None if args.skip_ceiling else credit_ceiling(service.database_url, 1, args.accounts, args.concurrency,
                                                            args.pgbench_seconds, details=True)
    two_commits = None if args.skip_ceiling else two_commit_ceiling(
        service.database_url, 1, args.accounts, args.two_commit_clients or args.clients, args.pgbench_seconds)
    start_the_api(args, children, service)
    if args.mode == "concurrent":
        start_the_worker(args, children, service)
    jobs = credit_jobs(args, run_id)
    poller = Poller(service.database_url, args.poll_interval)
    if args.mode == "concurrent" and args.warmup > 0:
        warm_up(args, service, poller, run_id)
    clock = start_clock(args, service, spies)
    load = post_credits(args, service, poller, clock, jobs)
    clock.drain_start = clock.accept_end
    if args.mode == "phased":
        start_phased_worker(args, children, service, clock, spies)
    drain(args, service, poller, clock, len(load.accepted))
    for spy in spies:
        stop_py_spy(spy)
    spies.clear()
    stop_service(args, service, clock, poller)
    ops = operation_stats(service.database_url, poller.since)
    log("audit")
    problems = services_audit(service.settings, stuck_after=timedelta(seconds=args.drain_timeout + 60))
    problems += accounting_problems(args, service, load)
    result = build_result(args, service, (ceiling, two_commits), load, ops, clock, problems)
    out = write_json(Path(args.output), result)
    report(result, out)
    if problems:
        return 1
    if args.fail_below_target and not result["target_met"]:
        return 1
    return 0


# --------------------------------------------------------------------------------------------------
# Set-up: Redis, the database, the service


def prepare(args, children: list[Child], run_id: str) -> Service:
    """Redis (flushed) and a fresh database, migrated and seeded; the service's environment."""
    from worker import settings as settings_module

    redis_url, redis = start_redis(args, children)
    redis_version = flushed(redis_url)
    env = service_env(args.admin_url.rsplit("/", 1)[0] + f"/{args.database}", redis_url)
    settings = settings_module.load(env)
    t = time.monotonic()
    log(f"creating database {args.database}, migrating, seeding {args.accounts} users, accounts (intro credit "
        f"{settings.intro_credit_cents} cents as real ledger entries), workspaces")
    fresh_database(args.admin_url, args.database, args.accounts, settings.intro_credit_cents, INTRO_SEED)
    log(f"set-up done in {time.monotonic() - t:.1f} s")
    with psycopg.connect(env["DATABASE_URL"], autocommit=True) as conn:
        server = {name: conn.execute(f"SHOW {name}").fetchone()[0]
                  for name in ("synchronous_commit", "fsync", "server_version")}
    return Service(env, settings, server, redis, redis_version, hostname=f"bench-{run_id}@%h")


def start_redis(args, children: list[Child]) -> tuple[str, Child | None]:
    """A private redis-server on --redis-port, unless --redis-url names a database of one's own."""
    if args.redis_url:
        if urlparse(args.redis_url).path in ("", "/", "/0"):
            raise SetupError("--redis-url must name a private database number other than 0, e.g. /13")
        return args.redis_url, None
    if not port_is_free(args.redis_port):
        raise SetupError(f"port {args.redis_port} is taken; pick another --redis-port")
    return f"redis://127.0.0.1:{args.redis_port}/0", start_redis_on(children, args.redis_port)


def flushed(redis_url: str) -> str | None:
    """FLUSHDB once Redis answers; its version."""
    import redis as redis_client

    r = redis_client.Redis.from_url(redis_url)

    def answers() -> bool:
        try:
            return r.ping()
        except redis_client.ConnectionError:
            return False
    wait_until(answers, 10, f"Redis at {redis_url}", interval=0.1)
    r.flushdb()
    return r.info().get("redis_version")


def ready(port: int) -> bool:
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        c.request("GET", "/ready")
        ok = c.getresponse().status == 200
        c.close()
        return ok
    except OSError:
        return False


def start_the_api(args, children: list[Child], service: Service) -> None:
    """The real API (harness.start_api), once /ready answers and each API worker process has its pools."""
    from worker.cli import api_argv

    log(f"starting the API: granian {args.api_workers} x {args.api_threads}")
    service.port = start_api(children, service.env, args.api_workers, args.api_threads)
    service.api, service.api_argv = children[-1], api_argv(service.port, args.api_workers, args.api_threads)
    log(f"the API runs: {' '.join(service.api_argv[1:])}")
    wait_until(lambda: ready(service.port), 60, "the API's /ready", interval=0.1)
    for _ in range(4 * args.api_workers):  # let each API worker process open its engine and broker pools
        ready(service.port)


def start_the_worker(args, children: list[Child], service: Service) -> None:
    """The real worker on every queue (harness.start_worker), once it is ready."""
    from worker.cli import ALL_QUEUES, worker_argv

    service.worker_argv = worker_argv(ALL_QUEUES, args.concurrency, name=service.hostname)
    log(f"starting the worker: {' '.join(service.worker_argv[1:])}")
    service.worker = start_worker(children, service.env, "worker", args.concurrency, service.hostname)


# --------------------------------------------------------------------------------------------------
# Load, drain, stop


def credit_jobs(args, run_id: str) -> list[tuple[str, int, str]]:
    """(workspace, cents, Idempotency-Key) of each credit, the same for the same --seed."""
    rng = random.Random(args.seed)
    return [(workspace_id(rng.randint(1, args.accounts)), rng.randint(1, 5000), f"bench-{run_id}-{i}")
            for i in range(args.credits)]


def warm_up(args, service: Service, poller: Poller, run_id: str) -> None:
    """--warmup credits through the same API and worker, all applied before the clock starts; from then on the
    poller and the operation statistics count only what is created after them."""
    jobs = credit_jobs(argparse.Namespace(**vars(args) | {"credits": args.warmup, "seed": args.seed + 1}),
                       f"{run_id}-warm")
    load = CreditLoad(service.port, service.env["BILLING_OPERATOR_TOKEN"], jobs, args.clients,
                      time.monotonic() + args.seconds, not args.no_idempotency_key)
    load.run()
    wait_until(lambda: sum(poller.counts()[:2]) >= len(load.accepted), args.drain_timeout, "the warm-up's credits")
    log(f"warm-up: {len(load.accepted)} credits accepted and applied, not counted; "
        f"errors {dict(load.errors) or 'none'}")
    poller.measure_from_now()


def spy_on(args, spies: list[subprocess.Popen], child: Child, name: str) -> None:
    if args.py_spy:
        spies.append(start_py_spy(args.py_spy, child.proc.pid, name, args.py_spy_rate, args.py_spy_mode))


def start_clock(args, service: Service, spies: list[subprocess.Popen]) -> Clock:
    """py-spy on what runs, then the first samples: CPU per component and the server's counters."""
    roots = {"api": service.api.proc.pid, "loadgen": os.getpid()}
    if service.worker:
        roots["worker"] = service.worker.proc.pid
    if service.redis:
        roots["redis"] = service.redis.proc.pid
    if args.py_spy:
        spy_on(args, spies, service.api, "api")
        if service.worker:
            spy_on(args, spies, service.worker, "worker")
        time.sleep(1.0)
    pg_before = pg_counters(service.database_url, args.database)
    meter = CpuMeter(roots, args.database, postmaster_pid(service.database_url))
    return Clock(meter, pg_before, meter.sample())


def post_credits(args, service: Service, poller: Poller, clock: Clock, jobs: list) -> CreditLoad:
    load = CreditLoad(service.port, service.env["BILLING_OPERATOR_TOKEN"], jobs, args.clients,
                      time.monotonic() + args.seconds, not args.no_idempotency_key)
    log(f"posting {args.credits} credits over {args.accounts} workspaces from {args.clients} keep-alive "
        f"clients (limit {args.seconds:.0f} s, mode {args.mode})")
    loader = threading.Thread(target=load.run, daemon=True)
    loader.start()
    progress_at = time.monotonic() + 2
    while loader.is_alive():
        loader.join(0.25)
        if time.monotonic() >= progress_at:
            progress_at += 2
            done, failed, _ = poller.counts()
            log(f"  accepted {len(load.accepted)}, applied {done}, failed {failed}")
    clock.accept_end = clock.meter.sample()
    log(f"accepted {len(load.accepted)} in {load.span():.2f} s; errors {dict(load.errors) or 'none'}")
    return load


def start_phased_worker(args, children: list[Child], service: Service, clock: Clock,
                        spies: list[subprocess.Popen]) -> None:
    """Phased mode: the worker starts once everything is accepted; the clock of the drain starts with it."""
    start_the_worker(args, children, service)
    clock.drain_start_wall = time.time()  # the worker consumes from here
    clock.meter.roots["worker"] = service.worker.proc.pid
    clock.drain_start = clock.meter.sample()  # phased: CPU shares of the drain alone
    spy_on(args, spies, service.worker, "worker")


def drain(args, service: Service, poller: Poller, clock: Clock, accepted: int) -> None:
    """Wait until every accepted operation is finished, for at most --drain-timeout."""
    deadline = time.monotonic() + args.drain_timeout
    progress_at = time.monotonic() + 2
    while time.monotonic() < deadline:
        done, failed, total = poller.counts()
        if done + failed >= accepted and total >= accepted:
            clock.done_wall = time.time()
            break
        if time.monotonic() >= progress_at:
            progress_at += 2
            log(f"  draining: applied {done}, failed {failed} of {accepted}")
        if service.worker and service.worker.proc.poll() is not None:
            log("the worker exited during the drain")
            break
        time.sleep(args.poll_interval)
    clock.end = clock.meter.sample()


def stop_service(args, service: Service, clock: Clock, poller: Poller) -> None:
    """Stop the worker and the API (so every backend has flushed its statistics), then read the counters."""
    for child in (service.worker, service.api):
        if child:
            child.stop()
    time.sleep(0.5)
    clock.pg_after = pg_counters(service.database_url, args.database)
    clock.polls = poller.polls
    poller.close()


# --------------------------------------------------------------------------------------------------
# What the database says, and the bench's own accounting of what it sent

OPERATION_STATS = """
SELECT count(*) FILTER (WHERE status = 'succeeded'),
       count(*) FILTER (WHERE status = 'failed'),
       count(*),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM updated_at - created_at))
           FILTER (WHERE status = 'succeeded'),
       percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM updated_at - created_at))
           FILTER (WHERE status = 'succeeded'),
       max(extract(epoch FROM updated_at - created_at)) FILTER (WHERE status = 'succeeded'),
       avg(extract(epoch FROM updated_at - created_at)) FILTER (WHERE status = 'succeeded'),
       extract(epoch FROM max(updated_at) - min(created_at)),
       max(attempts)
FROM operations WHERE kind = 'credit' AND created_at >= %s"""
OPERATION_FAILURES = ("SELECT error::text, count(*) FROM operations WHERE status = 'failed' "
                      "GROUP BY 1 ORDER BY 2 DESC LIMIT 5")


def operation_stats(url: str, since: datetime) -> dict:
    """The credit operations created since `since`: counts, accept-to-applied latencies (seconds) and span, the
    first failures (of any)."""
    with psycopg.connect(url, autocommit=True) as conn:
        stats = conn.execute(OPERATION_STATS, (since,)).fetchone()
        failures = conn.execute(OPERATION_FAILURES).fetchall()
    keys = ("succeeded", "failed", "operations", "p50", "p99", "max", "avg", "db_span", "max_attempts")
    ops = dict(zip(keys, stats), failures=failures)
    for k in ("p50", "p99", "max", "avg"):
        ops[k] = None if ops[k] is None else float(ops[k])
    return ops


ENTRY_MISMATCH = """
SELECT count(*) FROM operations o
LEFT JOIN (SELECT reference, count(*) AS n, sum(amount_cents) AS amount FROM ledger_entries
           WHERE kind = 'credit_grant' GROUP BY reference) e ON e.reference = o.id
WHERE o.kind = 'credit' AND (
    (o.status = 'succeeded' AND (e.n IS DISTINCT FROM 1
                                 OR e.amount IS DISTINCT FROM (o.payload->>'amountCents')::bigint))
    OR (o.status <> 'succeeded' AND e.n IS NOT NULL))"""
ORPHAN_ENTRIES = """
SELECT count(*) FROM ledger_entries e LEFT JOIN operations o ON o.id = e.reference
WHERE e.kind = 'credit_grant' AND o.id IS NULL"""
TOTALS = """
SELECT (SELECT sum(balance_cents) FROM billing_accounts),
       (SELECT coalesce(sum((payload->>'amountCents')::bigint), 0) FROM operations
        WHERE status = 'succeeded')"""


def accounting(url: str, accepted: list[tuple[str, float]]) -> dict:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE sent (id text PRIMARY KEY)")
        with conn.cursor().copy("COPY sent (id) FROM STDIN") as copy:
            for op_id, _ in accepted:
                copy.write_row((op_id,))
        missing = conn.execute("SELECT count(*) FROM sent LEFT JOIN operations o USING (id) "
                               "WHERE o.id IS NULL").fetchone()[0]
        not_applied = conn.execute("SELECT count(*) FROM sent JOIN operations o USING (id) "
                                   "WHERE o.status <> 'succeeded'").fetchone()[0]
        entry_mismatch = conn.execute(ENTRY_MISMATCH).fetchone()[0]
        orphan_entries = conn.execute(ORPHAN_ENTRIES).fetchone()[0]
        balances, credited = conn.execute(TOTALS).fetchone()
    return {"missing": missing, "not_applied": not_applied, "entry_mismatch": entry_mismatch,
            "orphan_entries": orphan_entries, "balances": balances, "credited": credited}


def accounting_problems(args, service: Service, load: CreditLoad) -> list[str]:
    """Every 202 has its operation, which succeeded with exactly one entry; no entry lacks an operation; the
    balances add up to the intro credits and the applied credits."""
    found = accounting(service.database_url, load.accepted)
    expected_total = args.accounts * service.settings.intro_credit_cents + found["credited"]
    problems = []
    if found["missing"]:
        problems.append(f"{found['missing']} accepted operation(s) have no row in operations")
    if found["not_applied"]:
        problems.append(f"{found['not_applied']} accepted operation(s) did not succeed within "
                        f"{args.drain_timeout:.0f} s")
    if found["entry_mismatch"]:
        problems.append(f"{found['entry_mismatch']} operation(s) without exactly one matching ledger entry")
    if found["orphan_entries"]:
        problems.append(f"{found['orphan_entries']} credit_grant entr(y/ies) without an operation")
    if found["balances"] != expected_total:
        problems.append(f"sum of balances {found['balances']} != intro credits + applied credits {expected_total}")
    return problems


# --------------------------------------------------------------------------------------------------
# The figures: bench/results/credits.json (bench/run reads ceiling.tps, applied.per_s, ratio_to_ceiling)


def build_result(args, service: Service, ceilings: tuple[dict | None, dict | None], load: CreditLoad, ops: dict,
                 clock: Clock, problems: list[str]) -> dict:
    applied_span, applied_per_s = apply_rate(args, ops, clock, load)
    ceiling, two_commits = ceilings
    ratio = applied_per_s / ceiling["tps"] if ceiling else None
    ratio2 = applied_per_s / two_commits["tps"] if two_commits else None
    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "git": git_state(),
        "config": config_of(args, service),
        "ceiling": {"tps": ceiling["tps"] if ceiling else None, "variant": ceiling["variant"] if ceiling else None,
                    "runs": [{"variant": name, **run} for name, run in ceiling["runs"].items()] if ceiling else []},
        "accepted": accepted_of(load),
        "applied": applied_of(args, ops, applied_span, applied_per_s),
        "accept_to_applied_ms": {k: ms(ops[k], 1) for k in ("p50", "p99", "max", "avg")},
        "two_commit_ceiling": two_commits and {k: two_commits[k] for k in ("tps", "clients", "seconds", "transactions",
                                                                            "failed", "commits_per_credit", "sql")},
        "ratio_to_ceiling": round(ratio, 3) if ratio is not None else None,
        "ratio_to_two_commit_ceiling": round(ratio2, 3) if ratio2 is not None else None,
        "target_ratio": TARGET_RATIO,
        "target_met": (ratio2 >= TARGET_RATIO) if ratio2 is not None else None,
        "moonshot_ratio": MOONSHOT_RATIO,
        "per_credit": per_credit(clock, len(load.accepted)),
        **cpu_of(args, clock, len(load.accepted)),
        "audit": {"ok": not problems, "problems": problems[:50]},
    }
    if args.py_spy:
        result["py_spy"] = {name: summarize_py_spy(RESULTS / f"pyspy-{name}.txt") for name in ("api", "worker")}
    return result


def config_of(args, service: Service) -> dict:
    return {"credits": args.credits, "warmup": args.warmup if args.mode == "concurrent" else 0,
            "seconds_limit": args.seconds, "accounts": args.accounts,
            "worker_concurrency": args.concurrency, "clients": args.clients,
            "api_workers": args.api_workers, "api_threads": args.api_threads, "mode": args.mode,
            "idempotency_key": not args.no_idempotency_key, "cpus": os.cpu_count(),
            "postgres": service.server["server_version"], "synchronous_commit": service.server["synchronous_commit"],
            "fsync": service.server["fsync"], "redis": service.redis_version, "redis_url": service.env["REDIS_URL"],
            "database": args.database, "api_argv": service.api_argv, "worker_argv": service.worker_argv,
            "py_spy": args.py_spy_mode if args.py_spy else None}


def accepted_of(load: CreditLoad) -> dict:
    span = load.span()
    return {"count": len(load.accepted), "sent": load.sent, "errors": dict(load.errors),
            "seconds": round(span, 3), "per_s": round(len(load.accepted) / span if span > 0 else 0.0, 1),
            "http_p50_ms": ms(percentile(load.latencies, 0.5), 1),
            "http_p99_ms": ms(percentile(load.latencies, 0.99), 1)}


def apply_rate(args, ops: dict, clock: Clock, load: CreditLoad) -> tuple[float | None, float]:
    """(seconds, succeeded/s) from the first 202 (phased: the worker's start) until the poller saw all finished."""
    start = clock.drain_start_wall if args.mode == "phased" else load.first_accept_wall
    span = (clock.done_wall - start) if (clock.done_wall and start) else None
    return span, ops["succeeded"] / span if span else 0.0


def applied_of(args, ops: dict, span: float | None, per_s: float) -> dict:
    db_span = ops["db_span"]
    per_s_db = ops["succeeded"] / float(db_span) if (db_span and args.mode == "concurrent") else None
    return {"succeeded": ops["succeeded"], "failed": ops["failed"], "operations": ops["operations"],
            "seconds": round(span, 3) if span else None,
            "per_s": round(per_s, 1),
            "measured_from": "worker start" if args.mode == "phased" else "first 202",
            "db_span_seconds": round(float(db_span), 3) if db_span else None,
            "per_s_db_span": round(per_s_db, 1) if per_s_db else None,
            "max_attempts": ops["max_attempts"], "failures": [list(f) for f in ops["failures"]]}


def per_credit(clock: Clock, accepted: int) -> dict:
    """Commits (the poller's own subtracted), rows and WAL per accepted credit."""
    before, after, n = clock.pg_before, clock.pg_after, max(accepted, 1)
    out = {k: round((after[k] - before[k]) / n, 2)
           for k in ("xact_commit", "xact_rollback", "tup_inserted", "tup_updated", "tup_fetched",
                     "wal_records", "wal_sync")}
    out["xact_commit"] = round((after["xact_commit"] - before["xact_commit"] - clock.polls) / n, 2)
    out["wal_bytes"] = round((after["wal_bytes"] - before["wal_bytes"]) / n)
    return out


def cpu_of(args, clock: Clock, accepted: int) -> dict:
    """CPU shares per component, and CPU milliseconds per credit with the throughput they would allow.

    The milliseconds are robust to other load on the machine. Phased: the accept phase (API) plus the drain
    (worker), so the idle gap in between costs nothing."""
    phased = args.mode == "phased"
    shares = {"while_accepting": CpuMeter.diff(clock.start, clock.accept_end),
              "until_applied": CpuMeter.diff(clock.drain_start if phased else clock.start, clock.end)}
    spent = CpuMeter.seconds(clock.start, clock.accept_end)
    for k, v in CpuMeter.seconds(clock.drain_start, clock.end).items():
        spent[k] = spent.get(k, 0.0) + v
    cpu_ms = {k: round(1000 * v / max(accepted, 1), 2) for k, v in spent.items()}
    service_ms = sum(v for k, v in cpu_ms.items() if k != "loadgen")
    bound = round((os.cpu_count() or 1) * 1000 / service_ms, 1) if service_ms else None
    return {"cpu_pct": shares,
            "cpu_ms_per_credit": {**cpu_ms, "service_total": round(service_ms, 2), "implied_bound_per_s": bound,
                                  "window": "accept phase + drain phase" if phased
                                  else "first request to all applied"}}


def services_audit(settings, *, stuck_after: timedelta) -> list[str]:
    """`billing audit`: AuditService.problems through the composition root; should the root not build
    (a working tree mid-change), the same checks through domain.store.audit on a unit of work."""
    try:
        from worker.container import build

        services = build(settings, enqueue=lambda *a, **k: False, pool_size=1)
        return services.audit.problems(stuck_after=stuck_after)
    except Exception as exc:  # noqa: BLE001 - fall back to the store-level checks, say so
        log(f"  services audit unavailable ({type(exc).__name__}: {exc}); running domain.store.audit directly")
    from domain.store import audit
    from domain.store.uow import UnitOfWork, make_engine

    engine = make_engine(settings.database_url, 1)
    try:
        with UnitOfWork(engine) as uow:
            return audit.problems(uow.conn, stuck_after=stuck_after)
    finally:
        engine.dispose()


def git_state() -> dict:
    """The commit the figures were taken at, and whether the working tree differed from it."""
    def git(*argv: str) -> str:
        try:
            return subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""
    return {"commit": git("rev-parse", "HEAD") or None,
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def report(res: dict, out: Path) -> None:
    c = res["config"]
    lines = ["", "=" * 78,
             f"bench/credits  {c['credits']} credits over {c['accounts']} workspaces, mode {c['mode']}, "
             f"{c['cpus']} CPUs",
             f"  API granian {c['api_workers']} workers x {c['api_threads']} threads; Celery worker concurrency "
             f"{c['worker_concurrency']}; {c['clients']} keep-alive clients; Idempotency-Key "
             f"{'on' if c['idempotency_key'] else 'off'}; synchronous_commit {c['synchronous_commit']}"
             + ("; PROFILED (py-spy)" if c["py_spy"] else ""), "-" * 78]
    lines += rate_lines(res) + cost_lines(res) + audit_lines(res) + [f"results: {out}", "=" * 78]
    print("\n".join(lines), flush=True)


def rate_lines(res: dict) -> list[str]:
    """ceiling, accepted/s, applied/s, accept->applied, applied/ceiling."""
    c, a, ap, lat = res["config"], res["accepted"], res["applied"], res["accept_to_applied_ms"]
    lines = []
    two = res.get("two_commit_ceiling")
    if two:
        lines.append(f"two-commit ceiling (pgbench -c {two['clients']}, -M prepared, accept + apply): "
                     f"{two['tps']:9.1f} credits/s")
    if res["ceiling"]["tps"]:
        runs = ", ".join(f"{r['variant']} {r['tps']:.0f} tps" for r in res["ceiling"]["runs"])
        lines.append(f"one-transaction ceiling (pgbench -c {c['worker_concurrency']}, -M prepared): "
                     f"{res['ceiling']['tps']:9.1f} tps"
                     f"   [{runs}]")
    lines.append(f"accepted/s:      {a['per_s']:9.1f}   ({a['count']} x 202 in {a['seconds']:.2f} s; errors "
                 f"{a['errors'] or 'none'}; HTTP p50 {a['http_p50_ms']} ms, p99 {a['http_p99_ms']} ms)")
    db = f"; DB span {ap['db_span_seconds']:.2f} s -> {ap['per_s_db_span']}/s" if ap["per_s_db_span"] else ""
    lines.append(f"applied/s:       {ap['per_s']:9.1f}   ({ap['succeeded']} succeeded, {ap['failed']} failed, "
                 f"{ap['seconds']} s from {ap['measured_from']} to all applied{db})")
    lines.append(f"accept->applied: p50 {lat['p50']} ms, p99 {lat['p99']} ms, max {lat['max']} ms "
                 f"(operations.updated_at - created_at)")
    if res.get("ratio_to_two_commit_ceiling") is not None:
        lines.append(f"applied/two-commit ceiling: {res['ratio_to_two_commit_ceiling']:.3f}x  target >= "
                     f"{res['target_ratio']}x: {'MET' if res['target_met'] else 'MISSED'}; moonshot >= "
                     f"{res['moonshot_ratio']}x")
    if res["ratio_to_ceiling"] is not None:
        lines.append(f"applied/one-transaction ceiling: {res['ratio_to_ceiling']:.3f}x (issue 9's figure)")
    return lines


def cost_lines(res: dict) -> list[str]:
    """per credit, cpu %, cpu ms/credit, and a warning when other work shared the machine."""
    c, pc = res["config"], res["per_credit"]
    lines = [f"per credit:      {pc['xact_commit']} commits, {pc['tup_inserted']} rows inserted, "
             f"{pc['tup_updated']} updated, {pc['wal_records']} WAL records, {pc['wal_bytes']} WAL bytes, "
             f"{pc['wal_sync']} WAL syncs (WAL figures are server-wide)"]
    for label, shares in (("cpu % accepting", res["cpu_pct"]["while_accepting"]),
                          ("cpu % draining" if c["mode"] == "phased" else "cpu % to applied",
                           res["cpu_pct"]["until_applied"])):
        if shares:
            parts = ", ".join(f"{k} {v}" for k, v in shares.items()
                              if k not in ("capacity", "machine_busy", "wall_seconds"))
            lines.append(f"{label}: {parts}; machine {shares['machine_busy']} of {shares['capacity']}")
    cm = res["cpu_ms_per_credit"]
    parts = ", ".join(f"{k} {v}" for k, v in cm.items() if k not in ("service_total", "implied_bound_per_s", "window"))
    lines.append(f"cpu ms/credit:   {parts}; service total {cm['service_total']} ms -> at most "
                 f"{cm['implied_bound_per_s']}/s on {c['cpus']} CPUs ({cm['window']})")
    busy = (res["cpu_pct"]["until_applied"] or {}).get("other", 0.0)
    if busy > 25:
        lines.append(f"WARNING: other work on the machine used {busy}% CPU (100 = one core) during the run; "
                     "the rates are depressed, compare runs by cpu ms/credit")
    return lines


def audit_lines(res: dict) -> list[str]:
    """audit, its first problems, and the py-spy summaries of a profiled run."""
    audit = res["audit"]
    lines = ["audit:           ok" if audit["ok"] else f"audit:           {len(audit['problems'])} problem(s)"]
    lines += [f"  {problem}" for problem in audit["problems"][:10]]
    for name, prof in (res.get("py_spy") or {}).items():
        if prof:
            lines.append(f"py-spy {name} ({res['config']['py_spy']} mode, {prof['samples']} samples): "
                         + ", ".join(f"{k} {v}%" for k, v in prof["roles_pct"].items()))
            lines.append("  packages: " + ", ".join(f"{k} {v}" for k, v in list(prof["packages_pct"].items())[:10]))
            lines += [f"  {v:5.1f}  {k}" for k, v in list(prof["project_inclusive_pct"].items())[:12]]
            lines.append("  self: " + "; ".join(f"{k} {v}" for k, v in list(prof["self_pct"].items())[:6]))
    return lines

if __name__ == "__main__":
    sys.exit(main())
