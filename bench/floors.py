"""bench/floors: the three hot paths of issue 14, the service beside its floor apps, on one seeded database.

The floor of a hot path is the thinnest Falcon + psycopg (+ redis-py) app that runs the same statements and
Redis calls for the same request, checks the caller the same way and answers the same JSON (bench/floor.py),
under the best WSGI server measured. This script creates one database (--users users, each with a workspace,
a default account of --page-entries ledger entries and an API key; every tier stored) and starts a private
redis-server. In process first, with no server running: the CPU one balance read costs the service and the
floor, and a cProfile of the service's reads (bench/floor_profile.py). Then, per hot path and per server shape,
the service and then its floor, each started on its own port and stopped after (so that the two share the
machine's moment while another engineer's load comes and goes):

* the service as `billing api` serves it (worker.processes.api_argv: granian 2 x 4 through worker/http_server.py,
  Prometheus multiprocess metrics), and the floor under gunicorn's stock gthread with the same shape (--gunicorn);
* granian (WSGI, the app factory: `api.app:get_app`, `bench.floor:<path>_app`), each of --granian-shapes
  (workers x blocking threads); the service's with PROMETHEUS_MULTIPROC_DIR set, as in production.

For each: the answers are checked against the service's (a good request, a wrong or missing key: 401, a
workspace the caller is not a member of: 404; for the rate-limit check also a user's key: 403/404, and an
unknown workspace: 404), then wrk (-t --wrk-threads -c --connections) measures the most req/s after a warm-up,
then an open-loop paced client (bench.balance_read.open_loop) measures p50 and p99 at half that rate (latency
counted from when each request was due) and, for the service, the p50 and p99 of the same requests as its own
request log timed them (in the app: what is left of a client's latency is the server's queues, HTTP, loopback and
client). Redis is flushed before each run, so every run starts with empty rate-limit windows. The 1-minute load
average is recorded beside every figure.

Just before the balance read's cells, pgbench runs its statements (floor.STATEMENTS["balance"], which are the
service's: today one, the live key, the workspace, the role and the default account; each its own transaction
as in autocommit; -M prepared, --pgbench-clients 4): the moonshot's measure (the service's best balance read
>= 0.3x of it).

Prints a Markdown table per cell and the ratios (service over floor, best server each; target >= 0.8x), the p99
at half load of the service's best cell of each path (< 10 ms; the rate-limit check < 5 ms), and writes
bench/results/floors.json (its "summary" rows are bench/run's). Ends with `billing audit` (reads only).
Exit 1 when an answer was not 2xx under load, when a floor answered differently from the service, or when
the audit failed; 2 when the set-up failed. See bench/README.md.
"""
import argparse
import asyncio
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import redis

from bench.balance_read import open_loop
from bench.floor import FACTORIES
from bench.harness import (Child, LOGS, ROOT, SetupError, audit, billing, capture_sql, free_port, fresh_database,
                           grant_seeded_credits, healthy, log, machine_busy, percentile, row, run_pgbench,
                           run_with_children, run_wrk, seed_api_keys, service_env, start_redis, user_key, workspace_id,
                           write_result, wrk_script)

TARGET = 0.8
MOONSHOT = 0.3  # the balance read against pgbench of its statements
TARGET_P99_MS = {"balance": 10, "transactions": 10, "ratelimit": 5}  # at half the measured maximum rate
PATHS = ("balance", "transactions", "ratelimit")
LABELS = {"balance": "balance read", "transactions": "transactions page", "ratelimit": "rate-limit check"}
OPENING_CENTS, ENTRY_CENTS = 100_000, 10  # a paid top-up of 100,000 cents: every account is tier3 (10,000/min)

# Every account's ledger grows from its opening top-up to `entries` entries (10-cent credit grants that keep the
# balance_after chain), so the first page is a full 50 with a next cursor.
GROW = """
INSERT INTO ledger_entries (billing_account_id, workspace_id, kind, amount_cents, balance_after_cents, description,
                            idempotency_key)
SELECT 'ba_' || md5('a' || n), 'ws_' || md5('w' || n), 'credit_grant', {cents}, {opening} + {cents} * g,
       'bench seed', 'seed-' || n || '-' || lpad(g::text, 6, '0')
FROM generate_series(1, %(users)s) n, generate_series(1, %(more)s) g ORDER BY n, g;
UPDATE billing_accounts SET balance_cents = {opening} + {cents} * %(more)s WHERE id LIKE 'ba_%%'
""".format(cents=ENTRY_CENTS, opening=OPENING_CENTS)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--database", default="billing_bench_floors")
    p.add_argument("--users", type=int, default=1000, help="users, each with a workspace, an account and a key")
    p.add_argument("--page-entries", type=int, default=60, help="ledger entries of every account")
    p.add_argument("--seconds", type=int, default=10, help="the max-rate run of each cell")
    p.add_argument("--paced-seconds", type=int, default=10, help="the paced run at half that rate (0: skip)")
    p.add_argument("--warmup", type=int, default=2, help="seconds of wrk before each max-rate run, not counted")
    p.add_argument("--connections", type=int, default=16, help="wrk's connections (issue 14: -t2 -c16)")
    p.add_argument("--wrk-threads", type=int, default=2)
    p.add_argument("--paced-connections", type=int, default=16)
    p.add_argument("--gunicorn", default="2x4",
                   help="workers x threads of the service as `billing api` serves it and of the floors under gunicorn")
    p.add_argument("--granian-shapes", default="2x1,2x2,2x4", help="workers x blocking threads, comma-separated")
    p.add_argument("--paths", default=",".join(PATHS), help="hot paths to measure: " + ",".join(PATHS))
    p.add_argument("--profile-requests", type=int, default=2000, help="in-process balance reads timed and "
                   "profiled (bench/floor_profile.py); 0: skip")
    p.add_argument("--pgbench-seconds", type=int, default=10, help="pgbench of the balance read's statements "
                   "(the moonshot's measure); 0: skip")
    p.add_argument("--pgbench-clients", type=int, default=4)
    p.add_argument("--quick", action="store_true", help="5 s runs, 1 s warm-ups: about 7 minutes on 2 cores")
    args = p.parse_args()
    if args.quick:
        args.seconds, args.paced_seconds, args.warmup, args.profile_requests = 5, 5, 1, min(args.profile_requests, 1000)
        args.pgbench_seconds = min(args.pgbench_seconds, 5)
    args.paths = [x for x in args.paths.split(",") if x]
    if set(args.paths) - set(PATHS):
        p.error(f"--paths takes {', '.join(PATHS)}")
    return args


def shape(text: str) -> tuple[int, int]:
    workers, threads = text.lower().split("x")
    return int(workers), int(threads)


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


# --- the requests of each hot path: for wrk (Lua), for the paced client (raw bytes), and for the checks

def hot_request(path: str, n: int, token: str) -> tuple[str, str, dict, str]:
    """(method, path, headers, body) of user n's request on this hot path (the operator's for ratelimit)."""
    ws = workspace_id(n)
    if path == "balance":
        return "GET", f"/workspaces/{ws}/billing/balance", {"Authorization": f"Bearer {user_key(n)}"}, ""
    if path == "transactions":
        return "GET", f"/workspaces/{ws}/billing/transactions?limit=50", {"Authorization": f"Bearer {user_key(n)}"}, ""
    return "POST", f"/workspaces/{ws}/rate-limits/check", {"Authorization": f"Bearer {token}",
                                                           "Content-Type": "application/json"}, "{}"


def raw_requests(path: str, users: int, token: str, port: int) -> list[bytes]:
    out = []
    for n in range(1, users + 1):
        method, url, headers, body = hot_request(path, n, token)
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        length = f"Content-Length: {len(body)}\r\n" if method == "POST" else ""
        out.append(f"{method} {url} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{head}{length}\r\n{body}".encode())
    return out


# --- the moonshot's measure: pgbench of the balance read's statements

# pgbench's expression for each parameter of the floor's statements, for a random user n (as harness.SEED and
# seed_api_keys name their rows); a statement's returned user_id feeds a later one's (\gset)
PGBENCH_PARAMS = {"key_hash": "sha256(convert_to('bk_bench_' || CAST(:n AS text), 'UTF8'))",
                  "workspace_id": "('ws_' || md5('w' || CAST(:n AS text)))",
                  "account_id": "CAST(NULL AS text)",  # the service passes None: the workspace's default account
                  "user_id": ":user_id"}


def balance_statements_script(users: int) -> str:
    """The floor's balance read statements (bench/floor.py, the service's own: `same_sql` checks it), each its
    own transaction as in autocommit, for a random user n."""
    from bench import floor

    statements, lines = floor.STATEMENTS["balance"], [f"\\set n random(1, {users})"]
    for i, sql in enumerate(statements):
        sql = re.sub(r"%\((\w+)\)s", lambda m: PGBENCH_PARAMS[m.group(1)], sql.strip())
        if "%s" in sql:
            raise SetupError(f"the floor's balance statement has positional parameters pgbench cannot name: {sql}")
        feeds = any("%(user_id)s" in later for later in statements[i + 1:])
        lines.append(sql + (" \\gset" if feeds else ";"))
    return "\n".join(lines) + "\n"


def balance_pgbench(url: str, args) -> dict:
    load_before = load_average()
    script = balance_statements_script(args.users)
    result = run_pgbench(url, script, args.pgbench_clients, args.pgbench_seconds, "balance-statements", details=True)
    log(f"pgbench of the balance read's statements: {result['tps']:.0f} reads/s (-c {args.pgbench_clients}, "
        f"load average {load_before} before)")
    return {k: v for k, v in result.items() if k != "argv"} | {"sql": script, "load_before": load_before}


# --- the servers

GRANIAN = str(Path(sys.executable).with_name("granian"))


def gunicorn_argv(target: str, port: int, workers: int, threads: int) -> list[str]:
    return [sys.executable, "-m", "gunicorn", target, "--bind", f"127.0.0.1:{port}", "--workers", str(workers),
            "--threads", str(threads), "--worker-class", "gthread", "--keep-alive", "75", "--error-logfile", "-"]


def granian_argv(target: str, port: int, workers: int, threads: int) -> list[str]:
    return [GRANIAN, "--interface", "wsgi", "--factory", target, "--host", "127.0.0.1", "--port", str(port),
            "--workers", str(workers), "--blocking-threads", str(threads), "--runtime-threads", "1",
            "--no-access-log", "--log-level", "warning"]


def servers(args) -> list[dict]:
    """What to serve, one server per hot path and app, in turn: per path, per server shape, the service then
    its floor, so that the two share the machine's moment (another engineer's load comes and goes)."""
    from worker.processes import api_argv

    gw, gt = shape(args.gunicorn)
    granian = [shape(s) for s in args.granian_shapes.split(",") if s]
    out = []
    for path in args.paths:
        floor = f"bench.floor:{FACTORIES[path]}"
        out += [{"app": "service", "server": f"granian {gw}x{gt} (billing api)", "path": path, "metrics_dir": False,
                 "argv": lambda port: api_argv(port, gw, gt), "env": {}},
                {"app": "floor", "server": f"gunicorn {gw}x{gt}", "path": path, "metrics_dir": False,
                 "argv": lambda port, f=floor: gunicorn_argv(f + "()", port, gw, gt),
                 "env": {"BENCH_FLOOR_POOL": str(gt)}}]
        for w, t in granian:
            out += [{"app": "service", "server": f"granian {w}x{t}", "path": path, "metrics_dir": True,
                     "argv": lambda port, w=w, t=t: granian_argv("api.app:get_app", port, w, t), "env": {}},
                    {"app": "floor", "server": f"granian {w}x{t}", "path": path, "metrics_dir": False,
                     "argv": lambda port, f=floor, w=w, t=t: granian_argv(f, port, w, t),
                     "env": {"BENCH_FLOOR_POOL": str(t)}}]
    return out


def start(name: str, argv: list[str], env: dict, children: list[Child], port: int) -> Child:
    child = Child(name, argv, env)
    children.append(child)
    child.wait_for(lambda: healthy(port), 60, name)
    return child


# --- the answers compared with the service's

def exchange(port: int, method: str, path: str, headers: dict, body: str = "") -> tuple[int, dict]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(method, path, body=body or None, headers=headers)
    answer = conn.getresponse()
    payload = answer.read()
    conn.close()
    return answer.status, json.loads(payload) if payload else {}


VOLATILE = {"asOf", "remaining", "resetSeconds"}


def comparable(body):
    if isinstance(body, dict):
        return {k: comparable(v) for k, v in body.items() if k not in VOLATILE}
    if isinstance(body, list):
        return [comparable(v) for v in body]
    return body


def checks(path: str, port: int, token: str) -> dict[str, tuple[int, dict]]:
    """A good request (user 1's), a wrong key, a workspace the caller is not a member of, and for the rate-limit
    check a user's key (403 on their own workspace) and an unknown workspace (404): status and comparable body."""
    method, url, headers, body = hot_request(path, 1, token)
    foreign = url.replace(workspace_id(1), workspace_id(2))
    found = {"ok": exchange(port, method, url, headers, body),
             "wrong key": exchange(port, method, url, headers | {"Authorization": "Bearer bk_bench_nobody"}, body),
             "no key": exchange(port, method, url, {k: v for k, v in headers.items() if k != "Authorization"}, body)}
    if path == "ratelimit":
        user = headers | {"Authorization": f"Bearer {user_key(1)}"}
        found["user key, own workspace"] = exchange(port, method, url, user, body)
        found["user key, not a member"] = exchange(port, method, foreign, user, body)
        found["unknown workspace"] = exchange(port, method, url.replace(workspace_id(1), "ws_" + "0" * 32),
                                              headers, body)
    else:
        found["not a member"] = exchange(port, method, foreign, headers, body)
    return {name: (status, comparable(answer)) for name, (status, answer) in found.items()}


EXPECTED = {"ok": 200, "wrong key": 401, "no key": 401, "not a member": 404, "user key, own workspace": 403,
            "user key, not a member": 404, "unknown workspace": 404}


def same_sql(env: dict, url: str, token: str) -> dict:
    """Whether each floor runs the service's statements (caught in process from the real app)."""
    from bench import floor

    def norm(sql: str) -> str:
        return " ".join(sql.split())
    found = {}
    digest = hashlib.sha256(user_key(1).encode()).digest()
    with psycopg.connect(url) as conn:
        for path in ("balance", "transactions", "ratelimit"):
            method, target, headers, body = hot_request(path, 1, token)
            caught = [s for t in capture_sql(env, method, target, headers, body) for s in t["statements"]]
            account = conn.execute("SELECT default_billing_account_id FROM workspaces WHERE id = %s",
                                   (workspace_id(1),)).fetchone()[0]
            access = {"workspace_id": workspace_id(1), "account_id": None, "key_hash": digest}
            page = {"account_id": account, "limit": 51}
            params = {"balance": [access], "transactions": [access, page], "ratelimit": [(workspace_id(1),)]}[path]
            ours = [psycopg.ClientCursor(conn).mogrify(sql, p) for sql, p in zip(floor.STATEMENTS[path], params)]
            found[path] = {"same": [norm(s) for s in caught] == [norm(s) for s in ours],
                           "service": caught, "floor": ours}
    return found


# --- one cell: one server, one hot path

def measure(server: dict, path: str, port: int, child: Child, args, token: str, flush,
            reference: dict | None) -> tuple[dict, dict]:
    """The cell's figures, and its answers to checks() (the first server's are every later one's reference)."""
    label = f"{server['app']} {path} {server['server']}"
    cell = {"app": server["app"], "server": server["server"], "path": path}
    flush()
    found = checks(path, port, token)
    statuses_ok = all(found[name][0] == EXPECTED[name] for name in found)
    same = reference is None or all(found[name] == reference.get(name) for name in found)
    cell["checks"] = {"statuses_ok": statuses_ok, "same_as_service": same,
                      "statuses": {name: status for name, (status, _) in found.items()}}
    if not statuses_ok or not same:
        cell["checks"]["answers"] = found
        log(f"  {label}: answers differ from the service's or from the expected statuses: "
            f"{json.dumps(cell['checks']['statuses'])}")
    script = wrk_script(f"floors-wrk-{path}", "bench/floors: one prebuilt request per user (or workspace), picked at "
                        "random", [hot_request(path, n, token) for n in range(1, args.users + 1)])
    name = f"floors-wrk-{server['app']}-{path}-{server['server'].split(' (')[0].replace(' ', '-')}"
    wrk = {"threads": args.wrk_threads, "connections": args.connections}
    flush()
    run_wrk(port, script, **wrk, seconds=args.warmup, name=name + "-warmup")
    flush()
    cell["load_before"] = load_average()
    busy, cpu = machine_busy(), child.cpu_seconds()
    top = run_wrk(port, script, **wrk, seconds=args.seconds, name=name)
    served = top["requests"] - top["non_2xx"]
    cell.update(top, load_after=load_average(),
                server_cpu_ms_per_req=round((child.cpu_seconds() - cpu) * 1000 / max(served, 1), 3),
                machine_busy_cores=round((machine_busy() - busy) / args.seconds, 2))
    if args.paced_seconds > 0 and top["req_per_s"] > 0:
        flush()
        requests = raw_requests(path, args.users, token, port)
        logged = child.log_path.stat().st_size
        half = asyncio.run(open_loop(port, requests, args.paced_connections, top["req_per_s"] / 2, args.paced_seconds))
        half["load_before"] = cell["load_after"]
        half["client_kept_up"] = half["achieved_per_s"] >= 0.95 * half["rate"]
        cell["half"] = half | in_the_app(child, logged)
    half = cell.get("half") or {}
    inside = f" (in the app: p50 {half['app_p50_ms']}, p99 {half['app_p99_ms']} ms)" if "app_p99_ms" in half else ""
    log(f"  {label}: {top['req_per_s']:.0f} req/s (p99 {top['p99_ms']} ms closed loop, non-2xx {top['non_2xx']}), "
        f"server CPU {cell['server_cpu_ms_per_req']} ms/req; half load {half.get('rate', 0):.0f}/s: p99 "
        f"{half.get('p99_ms')} ms{inside}, statuses {half.get('statuses')}; load {cell['load_before']}")
    return cell, found


def in_the_app(child: Child, since: int) -> dict:
    """What the service itself took for the paced requests: the duration_ms of the request log lines it wrote
    after byte `since` of its log (api/request_log.py times a request from the first middleware to the last,
    so the rest of a client's latency is the server's queues, the HTTP layer, the loopback and the client).
    Empty for a floor app, which writes no request log."""
    durations = []
    with open(child.log_path, "rb") as log_file:
        log_file.seek(since)
        for line in log_file:
            if line.startswith(b"{") and b'"message":"request"' in line and line.endswith(b"\n"):
                durations.append(json.loads(line)["duration_ms"])
    if not durations:
        return {}
    return {"app_requests": len(durations), "app_p50_ms": round(percentile(durations, 0.5), 2),
            "app_p99_ms": round(percentile(durations, 0.99), 2)}


def run(args, children: list[Child]) -> int:
    if not shutil.which("wrk"):
        raise SetupError("wrk is not installed (apt-get install -y wrk)")
    if not Path(GRANIAN).exists():
        raise SetupError(f"granian is not installed in the venv ({GRANIAN}): .venv/bin/pip install granian orjson")
    started_load = load_average()
    log(f"database {args.database}: {args.users} users, each with a workspace, an account of {args.page_entries} "
        f"entries and a key; load average {started_load}")
    database_url = fresh_database(args.admin_url, args.database, args.users, OPENING_CENTS)
    seed_api_keys(database_url, args.users)
    with psycopg.connect(database_url) as conn:
        for statement in GROW.split(";\n"):
            conn.execute(statement, {"users": args.users, "more": args.page_entries - 1})
    grant_seeded_credits(database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    redis_url, _ = start_redis(children)
    env = service_env(database_url, redis_url)
    token = env["BILLING_OPERATOR_TOKEN"]
    refreshed = billing(env, "tiers", "refresh", "--all")
    if refreshed.returncode != 0:
        raise SetupError(f"billing tiers refresh --all failed: {refreshed.stderr[-300:]}")
    log(refreshed.stdout.strip())
    client = redis.Redis.from_url(redis_url)
    sql = same_sql(env, database_url, token)
    log("the floors' statements are the service's: " + ", ".join(f"{p} {s['same']}" for p, s in sql.items()))

    profile = None
    if args.profile_requests > 0:
        log(f"in process: CPU per balance read, service and floor, then cProfile ({args.profile_requests} reads)")
        client.flushdb()
        metrics_dir = tempfile.mkdtemp(prefix="bench-floors-metrics-")
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        argv = [sys.executable, "-m", "bench.floor_profile", "--requests", str(args.profile_requests),
                "--users", str(args.users)] + (["--py-spy", py_spy] if Path(py_spy).exists() else [])
        out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=900,
                             env=env | {"PROMETHEUS_MULTIPROC_DIR": metrics_dir})
        shutil.rmtree(metrics_dir, ignore_errors=True)
        (LOGS / "floors-profile.log").write_text(out.stderr)
        if out.returncode != 0:
            raise SetupError(f"bench.floor_profile failed: {out.stdout[-300:]} {out.stderr[-500:]}")
        profile = json.loads(out.stdout) | {"load_before": load_average()}
        log("in process, CPU ms per request: " + ", ".join(f"{k} {v['cpu_ms']}" for k, v in profile["timed"].items()))

    cells, references = [], {}
    statements = None
    for server in servers(args):
        port, path = free_port(), server["path"]
        if path == "balance" and statements is None and args.pgbench_seconds > 0:  # next to the balance cells
            statements = balance_pgbench(database_url, args)
        extra = dict(server["env"])
        metrics_dir = None
        if server["metrics_dir"]:  # as worker/http_server.py does for `billing api`
            metrics_dir = tempfile.mkdtemp(prefix="bench-floors-metrics-")
            extra["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        name = f"{server['app']}-{path}-{server['server'].split(' (')[0].replace(' ', '-')}"
        log(f"{path}: {server['app']} under {server['server']} [load average {load_average()}]")
        child = start(name, server["argv"](port), env | extra, children, port)
        try:
            cell, answers = measure(server, path, port, child, args, token, client.flushdb, references.get(path))
            references.setdefault(path, answers)  # the first server's: the service as `billing api` serves it
            cells.append(cell)
        finally:
            child.stop()
            children.remove(child)
            if metrics_dir:
                shutil.rmtree(metrics_dir, ignore_errors=True)
    for child in reversed(children):
        child.stop()
    children.clear()
    checked = audit(env)
    return report(args, cells, sql, profile, checked, started_load, statements)


def best(cells: list[dict], app: str, path: str) -> dict | None:
    found = [c for c in cells if c["app"] == app and c["path"] == path]
    return max(found, key=lambda c: c["req_per_s"]) if found else None


def half_load_row(path: str, service: dict, floor: dict) -> dict:
    """The p99 of the service's best cell, paced at half its own maximum rate, against the path's limit."""
    half, limit = service.get("half"), TARGET_P99_MS[path]
    if not half:
        return row(f"{LABELS[path]}, p99 at half load, best server", "not measured (--paced-seconds 0)", "—", None,
                   f"< {limit} ms", None)
    lagged = "" if half["client_kept_up"] else ", client lagged: its p99 is the client's"
    theirs = floor.get("half")
    inside = f"; in the app p99 {half['app_p99_ms']} ms" if "app_p99_ms" in half else ""
    return row(f"{LABELS[path]}, p99 at half load, best server",
               f"p99 {half['p99_ms']} ms at {half['rate']:.0f} req/s ({service['server']}{lagged}{inside})",
               f"floor app: p99 {theirs['p99_ms']} ms at {theirs['rate']:.0f} req/s" if theirs else "—", None,
               f"< {limit} ms", half["p99_ms"] < limit, value=half["p99_ms"], load_before=half["load_before"])


def moonshot_row(service: dict, statements: dict) -> dict:
    ratio = service["req_per_s"] / statements["tps"] if statements["tps"] else None
    return row("balance read vs pgbench of its statements (moonshot)",
               f"{service['req_per_s']:.0f} req/s ({service['server']})",
               f"{statements['tps']:.0f} reads/s (pgbench -M prepared -c {statements['clients']}, the same SQL)",
               ratio, f"≥ {MOONSHOT}×", ratio is not None and ratio >= MOONSHOT, load_before=service["load_before"])


def report(args, cells: list[dict], sql: dict, profile: dict | None, checked: dict, started_load: float,
           statements: dict | None) -> int:
    lines = [("| hot path | app | server | req/s | p99 closed loop | p99 at half load (rate) | server CPU ms/req | "
              "load avg before |"), "|---|---|---|---|---|---|---|---|"]
    for c in cells:
        half = c.get("half") or {}
        paced = "—" if not half else (f"{half['p99_ms']} ms ({half['rate']:.0f}/s"
                                      + ("" if half["client_kept_up"] else ", client lagged")
                                      + (f"; in the app {half['app_p99_ms']} ms" if "app_p99_ms" in half else "") + ")")
        lines.append(f"| {LABELS[c['path']]} | {c['app']} | {c['server']} | {c['req_per_s']:,.0f} | {c['p99_ms']} ms | "
                     f"{paced} | {c['server_cpu_ms_per_req']} | {c['load_before']} |")
    ratios = ["", ("| hot path | service, best server | floor, best server | ratio | service as deployed "
                   "(billing api) / floor | server CPU per request, floor / service | target | met |"),
              "|---|---|---|---|---|---|---|---|"]
    summary = []
    figures = {}
    for path in args.paths:
        service, floor = best(cells, "service", path), best(cells, "floor", path)
        deployed = next((c for c in cells if c["app"] == "service" and c["path"] == path
                         and "billing api" in c["server"]), None)
        if not service or not floor:
            continue
        ratio = service["req_per_s"] / floor["req_per_s"] if floor["req_per_s"] else None
        as_deployed = deployed["req_per_s"] / floor["req_per_s"] if deployed and floor["req_per_s"] else None
        met = ratio is not None and ratio >= TARGET
        # the same two cells' server CPU per request: hardly moved by other load, unlike their req/s
        cpu = floor["server_cpu_ms_per_req"] / service["server_cpu_ms_per_req"] if service["server_cpu_ms_per_req"] \
            else None
        figures[path] = {"service": service, "floor": floor, "ratio": ratio, "deployed_ratio": as_deployed,
                         "cpu_ratio": cpu}
        ratios.append(f"| {LABELS[path]} | {service['req_per_s']:,.0f} req/s ({service['server']}) | "
                      f"{floor['req_per_s']:,.0f} req/s ({floor['server']}) | {ratio:.3f}× | "
                      f"{as_deployed:.3f}× | {floor['server_cpu_ms_per_req']} / {service['server_cpu_ms_per_req']} ms "
                      f"= {cpu:.3f}× | ≥ {TARGET}× | {'yes' if met else '**no**'} |")
        summary.append(row(f"{LABELS[path]} vs its floor", f"{service['req_per_s']:.0f} req/s ({service['server']})",
                           f"{floor['req_per_s']:.0f} req/s (floor app, {floor['server']})", ratio, f"≥ {TARGET}×",
                           met, load_before=min(service["load_before"], floor["load_before"])))
        if path == "balance" and statements:
            summary.append(moonshot_row(service, statements))
        summary.append(half_load_row(path, service, floor))
    text = "\n".join(lines + ratios)
    if profile:
        t = profile["timed"]
        text += ("\n\nIn process (falcon.testing, no server), CPU ms per request: service balance read "
                 f"{t['service balance read']['cpu_ms']}, floor {t['floor balance read']['cpu_ms']}; no-op (/health): "
                 f"service {t['service no-op (/health)']['cpu_ms']}, floor {t['floor no-op (/health)']['cpu_ms']} "
                 f"(load average {profile['load_before']} after).")
        spied = profile.get("py_spy")
        if spied and spied["samples_in_app"]:
            text += ("\n\nWhere the service's balance read spends its CPU (py-spy --gil on the in-process reads, "
                     f"{spied['samples_in_app']} samples in the app; ms: the piece's share of all samples x "
                     f"{t['service balance read']['cpu_ms']} ms):\n\n"
                     "| piece | share of the app's samples | ≈ CPU ms per read |\n|---|---|---|\n")
            text += "\n".join(f"| {p['piece'].strip()} | "
                               f"{'—' if p['share_pct'] is None else str(p['share_pct']) + '%'} | "
                               f"{p['estimated_cpu_ms']} |" for p in spied["pieces"])
        else:
            text += ("\n\nWhere the service's balance read spends its CPU (cProfile, CPU clock; its per-call cost "
                     "inflates call-heavy code):\n\n| piece | calls per read | share |\n|---|---|---|\n")
            text += "\n".join(f"| {p['piece'].strip()} | {p['calls_per_read']} | {p['share_pct']}% |"
                               for p in profile["pieces"])
    print("\n" + text + "\n", flush=True)
    answers_ok = all(c["checks"]["statuses_ok"] and c["checks"]["same_as_service"] for c in cells)
    all_2xx = all(not c["non_2xx"] and set((c.get("half") or {"statuses": {200: 1}})["statuses"]) <= {200}
                  for c in cells)
    result = {"cells": cells, "ratios": {p: {"service_best": f["service"]["server"], "service_req_per_s":
                                             f["service"]["req_per_s"], "floor_best": f["floor"]["server"],
                                             "floor_req_per_s": f["floor"]["req_per_s"],
                                             "ratio": None if f["ratio"] is None else round(f["ratio"], 4),
                                             "deployed_ratio": None if f["deployed_ratio"] is None
                                             else round(f["deployed_ratio"], 4),
                                             "cpu_ratio": None if f["cpu_ratio"] is None else round(f["cpu_ratio"], 4)}
                         for p, f in figures.items()},
              "target": TARGET, "moonshot": MOONSHOT, "target_p99_ms": TARGET_P99_MS,
              "balance_statements_pgbench": statements, "same_sql": sql, "profile": profile,
              "answers_as_service": answers_ok,
              "all_2xx": all_2xx, "audit": checked, "load_at_start": started_load, "cpus": os.cpu_count(),
              "table": text, "config": {k: v for k, v in vars(args).items() if k != "admin_url"}, "summary": summary}
    out = write_result("floors", result)
    log(f"written to {out}; answers as the service's: {answers_ok}; every answer 2xx under load: {all_2xx}")
    return 0 if answers_ok and all_2xx and checked["ok"] else 1


def main() -> int:
    return run_with_children(run, parse_args())


if __name__ == "__main__":
    sys.exit(main())
