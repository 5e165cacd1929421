"""In process, no server: the CPU one balance read costs the service's app (api.app.get_app(): its middleware,
JSON log line and Prometheus metrics as deployed) beside bench/floor.py's balance app and a no-op (/health),
through falcon.testing; then cProfile of the service's balance reads: the top functions by own time, and the
inclusive time of the pieces a read is made of (units of work, SQLAlchemy, psycopg, the log line, metrics),
all in CPU time (the profiler's clock is time.process_time: waits on PostgreSQL and Redis are not counted).
--path ratelimit: the same for the operator's rate-limit check (POST .../rate-limits/check) beside its floor.
falcon.testing's own cost (it builds the WSGI environ and validates the answer) is in every figure: the
no-op's cost shows it.

With --py-spy, py-spy also samples this process over the service's reads (a sampler's cost is per sample, not per
call as cProfile's, which inflates call-heavy code): the share of each piece, and that share of the unprofiled
CPU per read.

Run by bench/floors (--profile-requests) with the service's environment (DATABASE_URL, REDIS_URL,
BILLING_OPERATOR_TOKEN, PROMETHEUS_MULTIPROC_DIR set before anything imports prometheus_client, as
worker/http_server.py does); prints one JSON document on stdout. The app's log lines go to stderr.
"""
import argparse
import cProfile
import json
import os
import pstats
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

LABELS = {"balance": "balance read", "transactions": "transactions page", "ratelimit": "rate-limit check"}
# (label, a piece of the file's path, the function's name): inclusive time per read, and calls per read
PIECES = [
    ("falcon App.__call__ (the whole request)", "falcon/app.py", "__call__"),
    ("request log middleware (JSON line, metrics)", "api/request_log.py", "process_response"),
    ("  logging: Logger.info -> handler", "logging/__init__.py", "info"),
    ("  metrics: Prometheus (multiprocess)", "worker/metrics.py", "observe_request"),
    ("X-Request-Id, start time", "api/request_log.py", "process_request"),
    ("authentication (key lookup, a unit of work)", "api/auth.py", "process_resource"),
    ("API key limit (the Redis script)", "api/ratelimit.py", "process_resource"),
    ("  redis-py: one script call", "redis/commands/core.py", "__call__"),
    ("idempotency middleware", "api/idempotency.py", "process_resource"),
    ("the responder (workspace read, a unit of work)", "api/resources/workspace_billing.py", "on_get"),
    ("the responder (rate-limit check)", "api/resources/rate_limits.py", "on_post"),
    ("  view + JSON (resp.media)", "falcon/response.py", "render_body"),
    ("unit of work: enter (pool checkout, begin)", "domain/store/uow.py", "__enter__"),
    ("unit of work: exit (ROLLBACK, checkin)", "domain/store/uow.py", "__exit__"),
    ("SQLAlchemy Connection.execute", "sqlalchemy/engine/base.py", "execute"),
    ("  psycopg Cursor.execute (BEGIN + statement round trips)", "psycopg/cursor.py", "execute"),
    ("  psycopg Connection.rollback", "psycopg/connection.py", "rollback"),
]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=2000, help="requests per timed round and profiled")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds, apps in turn; the median is reported")
    p.add_argument("--users", type=int, default=100, help="users 1..n (bench.harness keys) read in turn")
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--path", choices=sorted(LABELS), default="balance",
                   help="the hot path: a user's balance read or first transactions page, or the operator's "
                   "rate-limit check (bench/floors)")
    p.add_argument("--py-spy", metavar="PATH", help="py-spy binary: also sample this process (--gil, 250 Hz) over "
                   "the service's reads: the share of each piece, unbiased by cProfile's per-call cost")
    return p.parse_args()


def frame_matches(frame: str, path_part: str, name: str) -> bool:
    """py-spy's raw frame: `Class.name (package/file.py:line)` or `name (file.py:line)`."""
    function, _, where = frame.partition(" (")
    return (function == name or function.endswith("." + name)) and path_part in where


def sampled(py_spy: str, client, requests, count: int, cpu_per_read: float) -> dict:
    """py-spy on this very process while it makes `count` reads: per piece, the share of the app's GIL-holding
    samples that have it on the stack, and its share of all samples times the unprofiled CPU per read (ms)."""
    fd, name = tempfile.mkstemp(prefix="floor-profile-", suffix=".txt")
    os.close(fd)
    # blocking (the default): py-spy pauses the process for each sample, so every stack is whole
    spy = subprocess.Popen([py_spy, "record", "--pid", str(os.getpid()), "--gil", "--rate", "250", "--format", "raw",
                            "--output", name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.5)  # attached
    cpu_ms(client, requests, count)
    spy.send_signal(signal.SIGINT)
    spy.wait(timeout=60)
    stacks = []
    for line in Path(name).read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if n.isdigit():
            stacks.append((stack.split(";"), int(n)))
    Path(name).unlink(missing_ok=True)
    in_app = [(frames, n) for frames, n in stacks if any(frame_matches(f, "falcon/app.py", "__call__") for f in frames)]
    total, everything = sum(n for _, n in in_app), sum(n for _, n in stacks)
    pieces = []
    for label, path_part, fn in PIECES:
        n = sum(c for frames, c in in_app if any(frame_matches(f, path_part, fn) for f in frames))
        pieces.append({"piece": label, "share_pct": round(100 * n / total, 1) if total else 0.0,
                       "estimated_cpu_ms": round(n / everything * cpu_per_read, 3) if everything else 0.0})
    outside = round((everything - total) / everything * cpu_per_read, 3) if everything else 0.0
    pieces.append({"piece": "outside the app (falcon.testing, the loop)", "share_pct": None,
                   "estimated_cpu_ms": outside})
    leaves: dict[str, int] = {}
    for frames, n in in_app:
        function, _, where = frames[-1].partition(" (")
        leaf = f"{function} ({where.rsplit('/', 1)[-1]}"
        leaves[leaf] = leaves.get(leaf, 0) + n
    top = sorted(leaves.items(), key=lambda kv: kv[1], reverse=True)[:15]
    return {"samples_in_app": total, "samples_outside_app": everything - total,
            "note": "share_pct: of the GIL-holding samples under falcon's App.__call__; estimated_cpu_ms: the piece's "
                    "samples over all samples, times the unprofiled CPU per read",
            "pieces": pieces, "top_leaves_pct": {k: round(100 * v / total, 1) for k, v in top} if total else {}}


def cpu_ms(client, requests: list[tuple[str, str, dict, str]], count: int) -> tuple[float, float]:
    """(CPU ms, wall ms) per request of this process, over count requests taken in turn; every answer 200."""
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(count):
        method, path, headers, body = requests[i % len(requests)]
        answer = client.simulate_request(method, path, headers=headers, body=body or None)
        if answer.status_code != 200:
            raise SystemExit(f"{path} answered {answer.status_code}: {answer.text[:300]}")
    return ((time.process_time() - cpu) * 1000 / count, (time.perf_counter() - wall) * 1000 / count)


def main() -> int:
    args = parse_args()
    from falcon import testing

    from api.app import get_app
    from bench import floor
    from bench.floors import hot_request

    hot, token = LABELS[args.path], os.environ["BILLING_OPERATOR_TOKEN"]
    service = testing.TestClient(get_app())
    bare = testing.TestClient(getattr(floor, floor.FACTORIES[args.path])())
    reads = [hot_request(args.path, n, token) for n in range(1, args.users + 1)]
    health = [("GET", "/health", {}, "")]
    cases = {f"service {hot}": (service, reads), f"floor {hot}": (bare, reads),
             "service no-op (/health)": (service, health), "floor no-op (/health)": (bare, health)}
    for client, requests in cases.values():
        cpu_ms(client, requests, 200)  # warm: pools, prepared statements, imports
    rounds: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, (client, requests) in cases.items():
            rounds[name].append(cpu_ms(client, requests, args.requests))
    timed = {name: {"cpu_ms": round(statistics.median(c for c, _ in values), 3),
                    "wall_ms": round(statistics.median(w for _, w in values), 3)} for name, values in rounds.items()}

    profiler = cProfile.Profile(time.process_time)  # CPU, not the waits on PostgreSQL and Redis
    profiler.enable()
    cpu_ms(service, reads, args.requests)
    profiler.disable()
    stats = pstats.Stats(profiler)
    n = args.requests
    top = sorted(stats.stats.items(), key=lambda item: item[1][2], reverse=True)[:args.top]

    def where(key) -> str:
        path, line, name = key
        short = path.split("site-packages/")[-1].split(f"{ROOT}/")[-1].split("python3.")[-1]
        return f"{short}:{line} {name}"
    own = [{"function": where(key), "calls_per_read": round(calls / n, 2), "own_ms": round(tt * 1000 / n, 4),
            "inclusive_ms": round(ct * 1000 / n, 4)} for key, (_, calls, tt, ct, _) in top]
    total = sum(v[2] for v in stats.stats.values()) * 1000 / n
    pieces = []
    for label, path_part, name in PIECES:
        found = [(key, v) for key, v in stats.stats.items() if key[2] == name and path_part in key[0]]
        if found:
            calls = sum(v[1] for _, v in found)
            inclusive = max(v[3] for _, v in found)  # one definition per label; nested ones counted once
            pieces.append({"piece": label, "calls_per_read": round(calls / n, 2),
                           "inclusive_ms": round(inclusive * 1000 / n, 4),
                           "share_pct": round(100 * inclusive * 1000 / n / total, 1) if total else None})
    spied = None
    if args.py_spy:
        spied = sampled(args.py_spy, service, reads, 3 * n, timed[f"service {hot}"]["cpu_ms"])
    json.dump({"path": args.path, "requests": n, "rounds": args.rounds, "timed": timed, "profiled_cpu_ms_per_read": round(total, 4),
               "pieces": pieces, "top_own": own, "py_spy": spied}, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
