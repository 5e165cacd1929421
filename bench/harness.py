"""Shared pieces of the benchmarks: processes, a fresh database, a private Redis, load, ceilings, audit."""
import contextlib
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import psycopg

from domain.ids import SQL_HEX

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
LOGS = RESULTS / "logs"
CLK_TCK = os.sysconf("SC_CLK_TCK")
BENCH = Path(sys.argv[0]).stem  # log files are named after the bench (bench/credits or bench/credits.py alike)
LOAD_BEFORE = round(os.getloadavg()[0], 2)  # the machine's 1-minute load average as the benchmark started

# n users, each with a default account holding `cents` from one stripe_topup entry, and a workspace on it.
SEED = """
INSERT INTO users (id, email, name)
SELECT 'usr_' || md5('u' || n), 'bench-' || n || '@example.com', 'Bench ' || n FROM generate_series(1, %(n)s) n;
INSERT INTO billing_accounts (id, owner_user_id, name, balance_cents, is_user_default)
SELECT 'ba_' || md5('a' || n), 'usr_' || md5('u' || n), 'Default', %(cents)s, true FROM generate_series(1, %(n)s) n;
INSERT INTO ledger_entries (billing_account_id, kind, amount_cents, balance_after_cents, description, idempotency_key)
SELECT 'ba_' || md5('a' || n), 'stripe_topup', %(cents)s, %(cents)s, 'bench top-up', 'bench:' || n
FROM generate_series(1, %(n)s) n;
INSERT INTO workspaces (id, name, owner_user_id, default_billing_account_id)
SELECT 'ws_' || md5('w' || n), 'Bench ' || n, 'usr_' || md5('u' || n), 'ba_' || md5('a' || n)
FROM generate_series(1, %(n)s) n;
INSERT INTO workspace_billing_accounts (workspace_id, billing_account_id)
SELECT 'ws_' || md5('w' || n), 'ba_' || md5('a' || n) FROM generate_series(1, %(n)s) n;
INSERT INTO workspace_members (workspace_id, user_id, role)
SELECT 'ws_' || md5('w' || n), 'usr_' || md5('u' || n), 'owner' FROM generate_series(1, %(n)s) n
"""


def log(msg: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {msg}", flush=True)


class SetupError(RuntimeError):
    pass


def run_with_children(run, args) -> int:
    """A benchmark's main: run(args, children), every process it started stopped afterwards, last first;
    a set-up failure is one line and exit 2."""
    children: list[Child] = []
    try:
        return run(args, children)
    except SetupError as exc:
        log(f"set-up failed: {exc}")
        return 2
    finally:
        for child in reversed(children):
            child.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def workspace_id(n: int) -> str:
    import hashlib

    return "ws_" + hashlib.md5(f"w{n}".encode()).hexdigest()


class Child:
    """A subprocess in its own session, stopped with its whole process group."""

    def __init__(self, name: str, argv: list[str], env: dict) -> None:
        LOGS.mkdir(parents=True, exist_ok=True)
        self.name, self.log_path = name, LOGS / f"{BENCH}-{name}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, check, timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise SetupError(f"{self.name} exited ({self.proc.returncode}) waiting for {what}; see {self.log_path}")
            if check():
                return
            time.sleep(0.1)
        raise SetupError(f"timed out waiting for {what}; see {self.log_path}")

    def cpu_seconds(self) -> float:
        """User + system CPU of every live process in this child's group (its workers included)."""
        total = 0.0
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[2]) == self.proc.pid:  # pgid
                    total += (int(fields[11]) + int(fields[12])) / CLK_TCK
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait(timeout=10)
        self._log.close()


def start_redis(children: list[Child]) -> tuple[str, int]:
    port = free_port()
    children.append(Child("redis", [shutil.which("redis-server") or "/usr/bin/redis-server", "--port", str(port),
                                    "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], dict(os.environ)))
    children[-1].wait_for(lambda: "Ready to accept connections" in children[-1].text(), 10, "redis-server")
    return f"redis://127.0.0.1:{port}/0", port


# Seeds write credits straight into the ledger; their grants as migration 0007 would make them (every one of
# priority 50 and no expiry, so the oldest is drawn first): each holds what the account's debits left of it,
# as the amount it opened with (the seeds have no history of draws to read a balance as of).
GRANT_SEEDED_CREDITS = """
INSERT INTO grants (billing_account_id, id, entry_id, source, category, priority, expires_at, amount_cents,
                    opened_cents, remaining_cents, status, closed_entry_id, created_at)
SELECT c.billing_account_id, 'grt_' || md5('g' || c.id), c.id,
       CASE c.kind WHEN 'intro_credit' THEN 'intro' WHEN 'stripe_topup' THEN 'stripe' WHEN 'x402_topup' THEN 'x402'
                   ELSE 'operator' END,
       CASE WHEN c.kind IN ('stripe_topup', 'x402_topup') THEN 'paid' ELSE 'promotional' END, 50, NULL,
       c.amount_cents, r.cents, r.cents, CASE WHEN r.cents > 0 THEN 'active' ELSE 'depleted' END,
       CASE WHEN r.cents = 0 THEN c.id END, c.created_at
FROM (SELECT e.*, SUM(e.amount_cents) OVER (PARTITION BY e.billing_account_id ORDER BY e.id) AS credited
      FROM ledger_entries e WHERE e.amount_cents > 0) c
JOIN (SELECT billing_account_id, -SUM(amount_cents) FILTER (WHERE amount_cents < 0) AS debited
      FROM ledger_entries GROUP BY billing_account_id) d USING (billing_account_id)
CROSS JOIN LATERAL (SELECT LEAST(c.amount_cents, GREATEST(c.credited - COALESCE(d.debited, 0), 0)) AS cents) r
WHERE NOT EXISTS (SELECT 1 FROM grants g WHERE g.billing_account_id = c.billing_account_id AND g.entry_id = c.id)
"""


def grant_seeded_credits(url: str) -> None:
    """The grants of credits a seed wrote into the ledger (run once, after the seed's last credit)."""
    with psycopg.connect(url) as conn:
        conn.execute(GRANT_SEEDED_CREDITS)


def regrant_seeded(url: str) -> None:
    """The grants again, after a seed wrote more entries straight into the ledger (credits, or debits that no
    grant was drawn for): each credit's grant holds what the debits left of it, as the service's draws would
    have. Only on a seeded database the service has not run on yet."""
    with psycopg.connect(url) as conn:
        conn.execute("DELETE FROM grant_draws")
        conn.execute("DELETE FROM grants")
        conn.execute(GRANT_SEEDED_CREDITS)


def fresh_database(admin_url: str, name: str, accounts: int, cents: int, seed: str = SEED) -> str:
    """Drop and create the database, migrate it, seed it (`seed`: statements on %(n)s and %(cents)s); its URL."""
    from worker.cli import migrate

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = admin_url.rsplit("/", 1)[0] + f"/{name}"
    migrate(url)
    with psycopg.connect(url) as conn:
        with conn.transaction():
            conn.execute("SET CONSTRAINTS ALL DEFERRED")
            for statement in filter(str.strip, seed.split(";\n")):
                conn.execute(statement, {"n": accounts, "cents": cents})
            conn.execute(GRANT_SEEDED_CREDITS)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        if conn.execute("SHOW synchronous_commit").fetchone()[0] != "on":
            raise SetupError("synchronous_commit is off; the benches compare durable commits only")
    return url


def start_api(children: list[Child], env: dict, workers: int, threads: int) -> int:
    from worker.cli import api_argv

    port = free_port()
    api = Child("api", api_argv(port, workers, threads), env)
    children.append(api)
    api.wait_for(lambda: healthy(port), 60, "the API")
    return port


def healthy(port: int) -> bool:
    """GET /health on 127.0.0.1:port answers 200."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/health")
        return conn.getresponse().status == 200
    except OSError:
        return False


def run_pgbench(url: str, script: str, clients: int, seconds: int, name: str, details: bool = False,
                defines: dict[str, int] | None = None) -> dict:
    """pgbench -T: tps and average latency; with details also the transactions done, failed, and its argv.
    `defines`: each client's variables before its first transaction (-D), kept from one transaction to the next."""
    from urllib.parse import urlparse

    u = urlparse(url)
    LOGS.mkdir(parents=True, exist_ok=True)  # a benchmark's pgbench may run before any of its children starts
    path = LOGS / f"{BENCH}-pgbench-{name}.sql"
    path.write_text(script)
    argv = [shutil.which("pgbench") or "/usr/bin/pgbench", "-h", u.hostname or "127.0.0.1", "-p", str(u.port or 5432),
            "-U", u.username or "postgres", "-n", "-M", "prepared", "-c", str(clients), "-j", str(clients),
            "-T", str(seconds), *(f"-D{k}={v}" for k, v in (defines or {}).items()), "-f", str(path),
            u.path.lstrip("/")]
    log(f"pgbench ({name}): {' '.join(argv[1:])}")
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120)
    (LOGS / f"{BENCH}-pgbench-{name}.log").write_text(out.stdout + out.stderr)
    if out.returncode != 0:
        raise SetupError(f"pgbench failed ({out.returncode}): {out.stderr.strip()[-500:]}")
    tps = float(re.search(r"tps = ([\d.]+) \(without initial connection time\)", out.stdout).group(1))
    latency = re.search(r"latency average = ([\d.]+) ms", out.stdout)
    result = {"tps": tps, "latency_avg_ms": float(latency.group(1)) if latency else None, "clients": clients,
              "seconds": seconds}
    if details:
        done = re.search(r"number of transactions actually processed: (\d+)", out.stdout)
        failed = re.search(r"number of failed transactions: (\d+)", out.stdout)
        result.update(transactions=int(done.group(1)) if done else None,
                      failed=int(failed.group(1)) if failed else 0, argv=argv)
    return result


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


class Load:
    """Closed-loop keep-alive HTTP clients: each sends next_request() until the deadline or None.

    A request is (path, body, headers), a POST, or (method, path, body, headers)."""

    def __init__(self, port: int, clients: int, next_request, deadline: float, host: str = "127.0.0.1") -> None:
        self.port, self.clients, self.next_request, self.deadline = port, clients, next_request, deadline
        self.host = host
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.bodies: list[dict] = []
        self.statuses: Counter = Counter()
        self.started = self.finished = 0.0

    def _client(self) -> None:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        conn.connect()
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        latencies, bodies, statuses = [], [], Counter()
        while time.monotonic() < self.deadline:
            request = self.next_request()
            if request is None:
                break
            method, path, body, headers = request if len(request) == 4 else ("POST", *request)
            start = time.monotonic()
            try:
                conn.request(method, path, body, headers)
                resp = conn.getresponse()
                payload = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                statuses[type(exc).__name__] += 1
                conn.close()
                conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
                continue
            latencies.append(time.monotonic() - start)
            statuses[resp.status] += 1
            bodies.append(json.loads(payload))
        conn.close()
        with self.lock:
            self.latencies += latencies
            self.bodies += bodies
            self.statuses += statuses

    def run(self) -> None:
        threads = [threading.Thread(target=self._client, daemon=True) for _ in range(self.clients)]
        self.started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.finished = time.monotonic()


def write_result(name: str, result: dict) -> Path:
    return write_json(RESULTS / f"{name}.json", result)


def write_json(path: Path, result: dict) -> Path:
    """The result, with the load average before the benchmark started (bench/run's table shows it)."""
    result = {"load_before": LOAD_BEFORE} | result
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return path


# Process control for bench/soak, which kills and restarts the service's processes on a schedule.

def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def start_redis_on(children: list[Child], port: int, name: str = "redis") -> Child:
    """A private redis-server on a fixed port, so a restarted one has the same URL; no persistence."""
    child = Child(name, [shutil.which("redis-server") or "/usr/bin/redis-server", "--port", str(port),
                         "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], dict(os.environ))
    children.append(child)
    child.wait_for(lambda: "Ready to accept connections" in child.text(), 10, f"redis-server on port {port}")
    return child


def start_worker(children: list[Child], env: dict, name: str, concurrency: int, hostname: str) -> Child:
    """The real worker (worker.cli.worker_argv) on every queue, once it is ready."""
    from worker.cli import ALL_QUEUES, worker_argv

    child = Child(name, worker_argv(ALL_QUEUES, concurrency, name=hostname), env)
    children.append(child)
    child.wait_for(lambda: " ready." in child.text(), 90, name)
    return child


def start_beat(children: list[Child], env: dict, name: str, state_dir: str) -> Child:
    from worker.cli import beat_argv

    child = Child(name, beat_argv(state_dir), env)
    children.append(child)
    child.wait_for(lambda: "beat: Starting" in child.text(), 60, name)
    return child


def sigkill(child: Child) -> None:
    """SIGKILL the child's whole process group (a crash: no shutdown code runs) and reap it."""
    try:
        os.killpg(child.proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    child.proc.wait(timeout=10)


def billing(env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """An operator command (`billing audit`, `billing relay`) run as the CLI runs it."""
    return subprocess.run([sys.executable, "-m", "worker.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


# Pieces of the benchmarks that bench/run drives (hot_account, balance_read, transactions_page, usage_overview,
# webhooks, memory): user keys, the service's environment, the credit ceiling, the SQL an endpoint runs as a
# pgbench script, latencies, `billing audit`, peak memory, and the rows of bench/run's table.

def user_key(n: int) -> str:
    """The API key seed_api_keys gives user n."""
    return f"bk_bench_{n}"


def seed_api_keys(url: str, users: int) -> None:
    """An API key for users 1..users (user_key(n)), hashed as domain.services.users.hash_key hashes it."""
    with psycopg.connect(url) as conn:
        conn.execute("INSERT INTO api_keys (id, user_id, key_hash) "
                     "SELECT 'key_' || md5('k' || n), 'usr_' || md5('u' || n), "
                     "sha256(convert_to('bk_bench_' || n, 'UTF8')) FROM generate_series(1, %(n)s) n", {"n": users})


def add_members(url: str, workspace: int, users: range) -> None:
    """These users join workspace n as members (its owner stays owner), so that reads of one workspace
    spread over many keys (each key has its own BILLING_API_RATE_LIMIT)."""
    with psycopg.connect(url) as conn:
        conn.execute("INSERT INTO workspace_members (workspace_id, user_id, role) "
                     "SELECT 'ws_' || md5('w' || %(w)s), 'usr_' || md5('u' || n), 'member' "
                     "FROM generate_series(%(first)s::int, %(last)s::int) n ON CONFLICT DO NOTHING",
                     {"w": workspace, "first": users[0], "last": users[-1]})


def service_env(database_url: str, redis_url: str, **extra: str) -> dict:
    """The environment of the API and the worker: production defaults, our database and Redis, a fresh
    operator token (BILLING_OPERATOR_TOKEN)."""
    env = {k: v for k, v in os.environ.items() if k not in ("CELERY_BROKER_URL", "BENCH_NO_REEXEC")}
    env.update(DATABASE_URL=database_url, REDIS_URL=redis_url, PYTHONUNBUFFERED="1",
               BILLING_OPERATOR_TOKEN=f"bench-{secrets.token_urlsafe(16)}", **extra)
    return env


def audit(env: dict) -> dict:
    """`billing audit` on the service's database: ok, and the problems it printed."""
    out = billing(env, "audit", timeout=1800)
    problems = [line for line in out.stdout.splitlines() if line.strip() and not line.startswith("audit: ")]
    if out.returncode not in (0, 1) or (out.returncode == 1 and not problems):  # it could not finish: say why
        problems.append(f"billing audit exited {out.returncode}: {out.stderr.strip()[-500:]}")
    log(f"billing audit: {'ok' if out.returncode == 0 else f'{len(problems)} problem(s)'}")
    return {"ok": out.returncode == 0, "problems": problems[:50]}


def wait_until(check, timeout: float, what: str, interval: float = 0.2) -> None:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            raise SetupError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def ms(seconds: float | None, digits: int = 2) -> float | None:
    return None if seconds is None else round(seconds * 1000, digits)


# The credit ceiling of issue 9 ("update cached balance + insert entry with unique key, one transaction per
# credit"): the same two variants as bench/credits, on copies of the two tables (same columns, indexes,
# foreign key and append-only trigger) so that the service's own tables stay the service's.
CREDIT_CEILING_TABLES = """
DROP SCHEMA IF EXISTS ceiling CASCADE;
CREATE SCHEMA ceiling;
CREATE TABLE ceiling.billing_accounts (LIKE public.billing_accounts INCLUDING ALL);
CREATE TABLE ceiling.ledger_entries (LIKE public.ledger_entries INCLUDING ALL);
ALTER TABLE ceiling.ledger_entries ADD FOREIGN KEY (billing_account_id) REFERENCES ceiling.billing_accounts (id);
CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ceiling.ledger_entries
    FOR EACH ROW EXECUTE FUNCTION public.ledger_entries_refuse_change();
INSERT INTO ceiling.billing_accounts SELECT * FROM public.billing_accounts;
INSERT INTO ceiling.ledger_entries (billing_account_id, workspace_id, kind, amount_cents, balance_after_cents,
                                    description, reference, idempotency_key)
SELECT billing_account_id, workspace_id, kind, amount_cents, balance_after_cents, description, reference,
       idempotency_key FROM public.ledger_entries ORDER BY id;
"""
CREDIT_CEILING_SCRIPTS = {
    # domain/store/ledger.py's one-statement posting
    "posting": """\\set aid random({first}, {last})
\\set amount random(1, 5000)
WITH inserted AS (
    INSERT INTO ceiling.ledger_entries (billing_account_id, workspace_id, kind, amount_cents,
                                balance_after_cents, description, reference, idempotency_key)
    SELECT a.id, NULL, 'credit_grant', CAST(:amount AS bigint), a.balance_cents + CAST(:amount AS bigint),
           'bench credit', NULL, 'op' || chr(58) || 'op_' || {hex}
    FROM ceiling.billing_accounts a
    WHERE a.id = 'ba_' || md5('a' || CAST(:aid AS text)) AND (false OR a.balance_cents + CAST(:amount AS bigint) >= 0)
    FOR UPDATE
    ON CONFLICT (billing_account_id, idempotency_key) DO NOTHING
    RETURNING *
)
UPDATE ceiling.billing_accounts SET balance_cents = inserted.balance_after_cents
FROM inserted WHERE ceiling.billing_accounts.id = inserted.billing_account_id
RETURNING inserted.*;
""",
    # the same work as an explicit transaction of two statements
    "explicit": """\\set aid random({first}, {last})
\\set amount random(1, 5000)
BEGIN;
UPDATE ceiling.billing_accounts SET balance_cents = balance_cents + CAST(:amount AS bigint)
WHERE id = 'ba_' || md5('a' || CAST(:aid AS text)) RETURNING balance_cents;
INSERT INTO ceiling.ledger_entries (billing_account_id, kind, amount_cents, balance_after_cents,
                                    description, idempotency_key)
SELECT id, 'credit_grant', CAST(:amount AS bigint), balance_cents, 'bench credit',
       'op' || chr(58) || 'op_' || {hex}
FROM ceiling.billing_accounts WHERE id = 'ba_' || md5('a' || CAST(:aid AS text));
END;
""",
}
CREDIT_CEILING_AUDIT = """
SELECT count(*) FROM ceiling.billing_accounts a
LEFT JOIN (SELECT billing_account_id, SUM(amount_cents) AS total FROM ceiling.ledger_entries
           GROUP BY billing_account_id) s ON s.billing_account_id = a.id
WHERE a.balance_cents <> COALESCE(s.total, 0)
"""


def credit_ceiling(url: str, first: int, last: int, clients: int, seconds: int, details: bool = False) -> dict:
    """pgbench credits to accounts first..last (random), both variants; the faster one's tps is the ceiling.
    Run it before the service starts, so that nothing of ours competes with it."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(CREDIT_CEILING_TABLES)
        conn.execute("VACUUM ANALYZE ceiling.billing_accounts, ceiling.ledger_entries")
    runs = {name: run_pgbench(url, script.format(first=first, last=last, hex=SQL_HEX), clients, seconds,
                              f"credit-{name}", details) for name, script in CREDIT_CEILING_SCRIPTS.items()}
    with psycopg.connect(url, autocommit=True) as conn:
        if conn.execute(CREDIT_CEILING_AUDIT).fetchone()[0]:
            raise SetupError("the ceiling's copied accounts do not match their entries after pgbench")
        conn.execute("DROP SCHEMA ceiling CASCADE")  # its rows would add to the service's table scans
    best = max(runs, key=lambda name: runs[name]["tps"])
    log("credit ceiling: " + ", ".join(f"{name} {run['tps']:.0f} tps" for name, run in runs.items()))
    return {"tps": runs[best]["tps"], "variant": best, "runs": runs}


# The SQL an endpoint runs, caught in process from the real app (api.app.create_app on the services the
# API builds), so the ceiling follows the code as it changes.

def capture_sql(env: dict, method: str, path: str, headers: dict, body: str | None = None) -> list[dict]:
    """The transactions one request runs: [{"statements": [...], "end": "COMMIT"|"ROLLBACK"|"AUTOCOMMIT"|"PIPELINE"}],
    parameters inlined as literals: those SQLAlchemy executes, and those domain.store.prepared sends on the bare
    psycopg connection (each its own, in autocommit; those of one pipeline together, in the one transaction its
    Sync ends). The request is made twice and the second is taken (connections and caches warm)."""
    from falcon import testing
    from sqlalchemy import Engine, event

    from api.app import create_app
    from worker import settings as settings_module
    from worker.container import build

    settings = settings_module.load(env)
    services = build(settings, enqueue=lambda *a, **k: False, pool_size=1)
    client = testing.TestClient(create_app(services, settings.operator_token, {},
                                           api_rate_limit=settings.api_rate_limit))
    caught: list[dict] = []

    def begin(conn) -> None:
        caught.append({"statements": [], "end": None})

    def execute(conn, cursor, statement, parameters, context, executemany) -> None:
        if not caught or caught[-1]["end"]:
            begin(conn)
        caught[-1]["statements"].append(psycopg.ClientCursor(cursor.connection).mogrify(statement, parameters))

    def ender(word: str):
        def end(conn) -> None:
            if caught and not caught[-1]["end"]:
                caught[-1]["end"] = word
        return end
    listeners = [("begin", begin), ("before_cursor_execute", execute), ("commit", ender("COMMIT")),
                 ("rollback", ender("ROLLBACK"))]
    bare_execute, bare_pipeline = psycopg.Connection.execute, psycopg.Connection.pipeline
    pipelined: list[dict] = []  # the open pipeline's statements

    def bare(conn, query, params=None, **kwargs):
        statement = psycopg.ClientCursor(conn).mogrify(query, params)
        if pipelined:
            pipelined[-1]["statements"].append(statement)
        elif conn.autocommit:
            caught.append({"statements": [statement], "end": "AUTOCOMMIT"})
        return bare_execute(conn, query, params, **kwargs)

    @contextlib.contextmanager
    def pipeline(conn):
        pipelined.append({"statements": [], "end": "PIPELINE"})
        caught.append(pipelined[-1])
        try:
            with bare_pipeline(conn) as p:
                yield p
        finally:
            pipelined.pop()
    try:
        for attempt in range(2):
            caught.clear()
            if attempt:
                for name, fn in listeners:
                    event.listen(Engine, name, fn)
                psycopg.Connection.execute, psycopg.Connection.pipeline = bare, pipeline
            answer = client.simulate_request(method, path, headers=headers, body=body)
            if answer.status_code >= 400:
                raise SetupError(f"{method} {path} answered {answer.status_code} in process: {answer.text[:300]}")
    finally:
        psycopg.Connection.execute, psycopg.Connection.pipeline = bare_execute, bare_pipeline
        for name, fn in listeners:
            if event.contains(Engine, name, fn):
                event.remove(Engine, name, fn)
    return [t for t in caught if t["statements"]]


_VARIABLE_IN_LITERAL = re.compile(r":[A-Za-z_]")


def _pgbench_safe(statement: str) -> str:
    """pgbench -M prepared reads ':name' anywhere as a variable, string literals included: a literal with
    such a colon is spelled with chr(58) instead (constant-folded, so plans do not change)."""
    out, i = [], 0
    while i < len(statement):
        if statement[i] != "'":
            out.append(statement[i])
            i += 1
            continue
        end = i + 1
        while True:
            end = statement.index("'", end)
            if statement[end + 1:end + 2] == "'":
                end += 2
                continue
            break
        literal = statement[i:end + 1]
        if _VARIABLE_IN_LITERAL.search(literal):
            literal = "(" + "' || chr(58) || '".join(literal.split(":")) + ")"
        out.append(literal)
        i = end + 1
    return "".join(out)


def pgbench_script(transactions: list[dict], replace: dict[str, str] | None = None, header: str = "") -> str:
    """A pgbench script of caught transactions; `replace` maps literal text (e.g. "'ws_...'") to a pgbench
    expression (e.g. "('ws_' || md5('w' || CAST(:n AS text)))") so that every run may pick another row."""
    lines = [header.rstrip("\n")] if header else []
    for t in transactions:
        autocommit = t["end"] == "AUTOCOMMIT"  # one statement, its own transaction: no BEGIN, no end
        if t["end"] == "PIPELINE":  # sent together, one Sync: one round trip, one transaction
            lines.append("\\startpipeline")
        elif not autocommit:
            lines.append("BEGIN;")
        for statement in t["statements"]:
            statement = _pgbench_safe(statement.strip().rstrip(";"))
            for literal, expression in (replace or {}).items():
                statement = statement.replace(literal, expression)
            lines.append(statement + ";")
        if t["end"] == "PIPELINE":
            lines.append("\\endpipeline")
        elif not autocommit:
            lines.append(f"{t['end'] or 'ROLLBACK'};")
    return "\n".join(lines) + "\n"


def pgbench_latencies(url: str, script: str, clients: int, transactions: int, name: str) -> dict:
    """pgbench -t with a per-transaction log: tps and the latencies (ms) of every transaction."""
    from urllib.parse import urlparse

    u = urlparse(url)
    LOGS.mkdir(parents=True, exist_ok=True)
    sql, prefix = LOGS / f"{BENCH}-pgbench-{name}.sql", LOGS / f"{BENCH}-pgbench-{name}-tx"
    sql.write_text(script)
    for old in LOGS.glob(f"{prefix.name}.*"):
        old.unlink()
    argv = [shutil.which("pgbench") or "/usr/bin/pgbench", "-h", u.hostname or "127.0.0.1", "-p", str(u.port or 5432),
            "-U", u.username or "postgres", "-n", "-M", "prepared", "-c", str(clients), "-j", str(clients),
            "-t", str(transactions), "-l", "--log-prefix", str(prefix), "-f", str(sql), u.path.lstrip("/")]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=1800, cwd=LOGS)
    (LOGS / f"{BENCH}-pgbench-{name}.log").write_text(out.stdout + out.stderr)
    if out.returncode != 0:
        raise SetupError(f"pgbench ({name}) failed ({out.returncode}): {out.stderr.strip()[-500:]}")
    latencies = [int(line.split()[2]) / 1000 for path in LOGS.glob(f"{prefix.name}.*")
                 for line in path.read_text().splitlines() if line.strip()]
    tps = float(re.search(r"tps = ([\d.]+) \(without initial connection time\)", out.stdout).group(1))
    return {"tps": tps, "transactions": len(latencies), "clients": clients,
            "p50_ms": round(percentile(latencies, 0.5), 3), "p95_ms": round(percentile(latencies, 0.95), 3),
            "p99_ms": round(percentile(latencies, 0.99), 3)}


def timed_requests(port: int, requests: list[tuple[str, str, str, dict]], count: int) -> dict[str, dict]:
    """count requests (label, method, path, headers), taken in turn, one at a time on one keep-alive
    connection; per label: the statuses and the latency percentiles (ms). Labels taken in turn share the
    machine's moment, so their ratio holds when the machine's load drifts."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.connect()
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    latencies: dict[str, list[float]] = {}
    statuses: dict[str, Counter] = {}
    for i in range(count):
        label, method, path, headers = requests[i % len(requests)]
        start = time.perf_counter()
        conn.request(method, path, headers=headers)
        resp = conn.getresponse()
        resp.read()
        latencies.setdefault(label, []).append((time.perf_counter() - start) * 1000)
        statuses.setdefault(label, Counter())[resp.status] += 1
    conn.close()
    return {label: {"count": len(values), "statuses": dict(statuses[label]),
                    "p50_ms": round(percentile(values, 0.5), 3), "p95_ms": round(percentile(values, 0.95), 3),
                    "p99_ms": round(percentile(values, 0.99), 3)} for label, values in latencies.items()}


def process_memory(child: Child) -> dict[int, dict]:
    """pid -> {cmd, role, hwm_mb (VmHWM, the peak RSS), rss_mb} of every process in the child's group;
    role is "main" for the child itself (granian's main process, Celery's consumer), "child" for its workers."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) != child.proc.pid:
                continue
            status = dict(line.split(":", 1) for line in (entry / "status").read_text().splitlines() if ":" in line)
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, ValueError):
            continue
        if "VmHWM" not in status:
            continue
        found[int(entry.name)] = {"cmd": cmd[:120], "role": "main" if int(entry.name) == child.proc.pid else "child",
                                  "hwm_mb": round(int(status["VmHWM"].split()[0]) / 1024, 1),
                                  "rss_mb": round(int(status["VmRSS"].split()[0]) / 1024, 1)}
    return found


def row(name: str, project: str, ceiling: str, ratio: float | None, target: str, met: bool | None, *,
        value: float | None = None, load_before: float | None = None) -> dict:
    """One line of bench/run's table. A row without a ratio may give the `value` its target limits (a p99 in ms,
    a peak in MB) for the chart; `load_before`: the load average before this row's own measurement, where the
    benchmark took several (else bench/run shows the one before the benchmark)."""
    return {"name": name, "project": project, "ceiling": ceiling, "ratio": None if ratio is None else round(ratio, 3),
            "target": target, "met": met, "value": value, "load_before": load_before}


# --- CPU per process, to show where a request's time goes on a shared machine

def machine_busy() -> float:
    """CPU seconds the whole machine spent busy so far (from /proc/stat), to show what else ran."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / CLK_TCK


def cpu_of(pids) -> float:
    """User + system CPU seconds of these live processes."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


class CpuMeter:
    """CPU seconds between start() and stop() of each child by name (the API, the worker, Redis: their whole
    process groups), the load generator (this process and the children it reaped: wrk, once it ended), the whole
    machine, and our database's PostgreSQL backends, sampled every 0.2 s so that backends which come and go (with
    more API threads than the engine's pool holds, overflow connections do) count from their start to their
    last sample."""

    def __init__(self, children: list[Child], database_url: str, database: str) -> None:
        self.children, self.database_url, self.database = children, database_url, database
        self.backends: dict[int, float] = {}  # pid -> CPU seconds at its last sample
        self._first: dict[int, float] = {}
        self._stop = threading.Event()

    def _sample(self, conn) -> None:
        pids = [r[0] for r in conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s "
                                           "AND pid <> pg_backend_pid()", (self.database,))]
        for pid in pids:
            if (cpu := cpu_of([pid])) > 0:
                self.backends[pid] = cpu

    def _sampler(self) -> None:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            while not self._stop.wait(0.2):
                self._sample(conn)
            self._sample(conn)

    def start(self) -> dict:
        self._stop.clear()
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            self._sample(conn)
        self._first = dict(self.backends)
        self._thread = threading.Thread(target=self._sampler, daemon=True)
        self._thread.start()
        return self._read(0.0)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        return self._read(sum(cpu - self._first.get(pid, 0.0) for pid, cpu in self.backends.items()))

    def _read(self, postgres: float) -> dict:
        own = os.times()
        spent = {name: 0.0 for name in ("api", "redis")}
        for child in self.children:
            spent[child.name] = spent.get(child.name, 0.0) + child.cpu_seconds()
        return spent | {"postgres": postgres, "loadgen": own.user + own.system + own.children_user
                        + own.children_system, "machine": machine_busy()}


def per_request_ms(before: dict, after: dict, requests: int) -> dict:
    """CPU milliseconds per request of each part between two readings; `other`: what else the machine ran."""
    spent = {k: after[k] - before[k] for k in before}
    spent["other"] = spent["machine"] - sum(v for k, v in spent.items() if k != "machine")
    return {k: round(v / max(requests, 1) * 1000, 3) for k, v in spent.items()}


# --- wrk: a load generator in C, little CPU per request beside the service on the same cores

# The requests as lines of tab-separated fields (method, path, body, then header names and values), parsed as the
# script loads: a Lua table written out literally holds too many constants for LuaJIT past some 10,000 requests.
_WRK_HEAD = """-- {what}
local data = [==[
{lines}
]==]
local requests = {{}}
for line in data:gmatch("[^\\n]+") do
    local f = {{}}
    for field in (line .. "\\t"):gmatch("([^\\t]*)\\t") do f[#f + 1] = field end
    local headers = {{}}
    for i = 4, #f - 1, 2 do headers[f[i]] = f[i + 1] end
    requests[#requests + 1] = wrk.format(f[1], f[2], headers, f[3] ~= "" and f[3] or nil)
end
local threads = 0
function setup(thread)
    threads = threads + 1
    thread:set("tid", threads)
end
"""
_WRK_RANDOM = """function init(args)
    math.randomseed(os.time() * 1000 + (tid or 0))
end
request = function()
    return requests[math.random(1, #requests)]
end
"""
# Each request once, in turn: thread t sends requests t, t + n, t + 2n, ... (n threads) for the run's duration; one
# that runs out sends the list's last request again (a caller checks how many were sent once). wrk's first thread
# makes one request() call only to check the script, so the list's first request is never sent.
_WRK_EACH = """local sent = 0
request = function()
    local i = math.min(tid + sent * {threads}, #requests)
    sent = sent + 1
    return requests[i]
end
"""


def wrk_script(name: str, what: str, requests: list[tuple[str, str, dict, str]], *, in_turn: int = 0) -> Path:
    """A wrk script (bench/results/logs/<name>.lua) sending `requests` ((method, path, headers, body)): picked at
    random, or, with in_turn=<wrk's threads>, each once in turn (see _WRK_EACH)."""
    lines = []
    for method, path, headers, body in requests:
        fields = [method, path, body, *(part for pair in headers.items() for part in pair)]
        if any(bad in field for field in fields for bad in ("\t", "\n", "]==]")):
            raise SetupError(f"a request's field holds a tab, a newline or ]==]: {fields}")
        lines.append("\t".join(fields))
    script = LOGS / f"{name}.lua"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(_WRK_HEAD.format(what=what, lines="\n".join(lines))
                      + (_WRK_EACH.format(threads=in_turn) if in_turn else _WRK_RANDOM))
    return script


def run_wrk(port: int, script: Path, *, threads: int, connections: int, seconds: int, name: str) -> dict:
    """wrk -t threads -c connections for at most `seconds`: its requests, those answered 2xx or 3xx per second,
    p50 and p99 (ms); its output in bench/results/logs/<name>.log."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SetupError("wrk is not installed (apt-get install -y wrk)")
    argv = [wrk, "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--latency", "-s", str(script),
            f"http://127.0.0.1:{port}"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    (LOGS / f"{name}.log").write_text(out.stdout + out.stderr)
    if out.returncode != 0:
        raise SetupError(f"wrk failed: {(out.stderr or out.stdout)[-300:]}")

    def latency(label: str) -> float:
        value, unit = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out.stdout, re.M).groups()
        return round(float(value) * {"us": 0.001, "ms": 1, "s": 1000}[unit], 2)
    total = int(re.search(r"(\d+) requests in", out.stdout).group(1))
    value, unit = re.search(r"requests in ([\d.]+)(us|ms|s|m|h),", out.stdout).groups()
    elapsed = float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}[unit]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out.stdout)
    errors = re.search(r"Socket errors: (.*)", out.stdout)
    not_ok = int(bad.group(1)) if bad else 0
    return {"tool": "wrk", "requests": total, "seconds": elapsed, "req_per_s": round((total - not_ok) / elapsed, 1),
            "non_2xx": not_ok, "socket_errors": errors.group(1) if errors else None, "p50_ms": latency("50"),
            "p99_ms": latency("99")}
