"""Shared pieces of bench/ratelimit and bench/usage: processes, a fresh database, a private Redis, load."""
import http.client
import json
import os
import re
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

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
LOGS = RESULTS / "logs"
CLK_TCK = os.sysconf("SC_CLK_TCK")
BENCH = Path(sys.argv[0]).name  # log files are named after the bench, so two benches never share one

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


def fresh_database(admin_url: str, name: str, accounts: int, cents: int) -> str:
    """Drop and create the database, migrate it, seed it; its URL."""
    from worker.cli import migrate

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = admin_url.rsplit("/", 1)[0] + f"/{name}"
    migrate(url)
    with psycopg.connect(url) as conn:
        with conn.transaction():
            conn.execute("SET CONSTRAINTS ALL DEFERRED")
            for statement in SEED.split(";\n"):
                conn.execute(statement, {"n": accounts, "cents": cents})
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

    def answers() -> bool:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            return conn.getresponse().status == 200
        except OSError:
            return False
    api.wait_for(answers, 60, "the API")
    return port


def run_pgbench(url: str, script: str, clients: int, seconds: int, name: str) -> dict:
    from urllib.parse import urlparse

    u = urlparse(url)
    path = LOGS / f"{BENCH}-pgbench-{name}.sql"
    path.write_text(script)
    argv = [shutil.which("pgbench") or "/usr/bin/pgbench", "-h", u.hostname or "127.0.0.1", "-p", str(u.port or 5432),
            "-U", u.username or "postgres", "-n", "-M", "prepared", "-c", str(clients), "-j", str(clients),
            "-T", str(seconds), "-f", str(path), u.path.lstrip("/")]
    log(f"pgbench ({name}): {' '.join(argv[1:])}")
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120)
    (LOGS / f"{BENCH}-pgbench-{name}.log").write_text(out.stdout + out.stderr)
    if out.returncode != 0:
        raise SetupError(f"pgbench failed ({out.returncode}): {out.stderr.strip()[-500:]}")
    tps = float(re.search(r"tps = ([\d.]+) \(without initial connection time\)", out.stdout).group(1))
    latency = re.search(r"latency average = ([\d.]+) ms", out.stdout)
    return {"tps": tps, "latency_avg_ms": float(latency.group(1)) if latency else None, "clients": clients,
            "seconds": seconds}


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


class Load:
    """Closed-loop keep-alive HTTP clients: each sends next_request() until the deadline or None."""

    def __init__(self, port: int, clients: int, next_request, deadline: float) -> None:
        self.port, self.clients, self.next_request, self.deadline = port, clients, next_request, deadline
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.bodies: list[dict] = []
        self.statuses: Counter = Counter()
        self.started = self.finished = 0.0

    def _client(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        conn.connect()
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        latencies, bodies, statuses = [], [], Counter()
        while time.monotonic() < self.deadline:
            request = self.next_request()
            if request is None:
                break
            path, body, headers = request
            start = time.monotonic()
            try:
                conn.request("POST", path, body, headers)
                resp = conn.getresponse()
                payload = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                statuses[type(exc).__name__] += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
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
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return path
