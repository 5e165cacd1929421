"""bench/ratelimit: decisions/s and p99 of POST /workspaces/{id}/rate-limits/check, beside redis-benchmark.

Creates a fresh database (1000 workspaces, each on its own account at tier3 so decisions are allowed),
starts a private redis-server and the real API (as `billing api` serves it), and drives the check endpoint on
random workspaces: first as fast as it answers (wrk when installed, else Python keep-alive clients) for the
decisions/s, then paced open-loop at a fraction of that rate for the p99 a caller sees when the API is not
saturated. Then, with the API stopped, redis-benchmark runs EVALSHA of the limiter's own Lua script (the one
round trip of each decision; keys spread like the accounts) on the same Redis. Prints API decisions/s as a
ratio of the raw script's rate against the 0.3x target, the p99 against 5 ms, and the CPU each process
spent per decision. See bench/README.md.
"""
import argparse
import asyncio
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import redis

from bench.harness import (Child, CpuMeter, LOGS, Load, RESULTS, SetupError, fresh_database, log,
                           per_request_ms, percentile, run_with_children, run_wrk, start_api, start_redis,
                           workspace_id, write_result, wrk_script)

TARGET_RATIO = 0.3
TARGET_P99_MS = 5.0
KEY_PREFIX = "billing-rl"  # domain.store.limiter's default


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--database", default="billing_bench_ratelimit")
    p.add_argument("--workspaces", type=int, default=1000)
    p.add_argument("--seconds", type=int, default=20, help="length of the max-rate run and of the paced run")
    p.add_argument("--clients", type=int, default=16, help="keep-alive connections of the max-rate run")
    p.add_argument("--loadgen", choices=("wrk", "python"), default="wrk" if shutil.which("wrk") else "python",
                   help="max-rate client: wrk (C, little CPU; the default when installed) or bench.harness.Load "
                        "(Python threads, which take CPU from the API on a small machine)")
    p.add_argument("--paced-fraction", type=float, default=0.5,
                   help="the paced run's rate as a fraction of the max rate (0: skip it)")
    p.add_argument("--paced-clients", type=int, default=16)
    p.add_argument("--api-workers", type=int, default=2)
    p.add_argument("--api-threads", type=int, default=4, help="as `billing api` (more than the engine's pool of "
                   "5 connections makes overflow connections come and go, each a new PostgreSQL backend)")
    p.add_argument("--redis-requests", type=int, default=200_000)
    p.add_argument("--redis-clients", type=int, default=50)
    p.add_argument("--py-spy", metavar="PATH", help="py-spy binary: sample the API's Python CPU (--gil) during the "
                   "max-rate run; raw stacks in bench/results/pyspy-ratelimit.txt (a profiled run is slower)")
    return p.parse_args()


# --- load: wrk, Python threads, and a paced open loop

def run_wrk_decisions(port: int, paths: list[str], headers: dict, clients: int, seconds: int,
                      meter: CpuMeter) -> dict:
    script = wrk_script("ratelimit-wrk", "a decision on a random workspace's budget",
                        [("POST", path, headers, "{}") for path in paths])
    log(f"wrk -t1 -c{clients} -d{seconds}s")
    before = meter.start()
    top = run_wrk(port, script, threads=1, connections=clients, seconds=seconds, name="ratelimit-wrk")
    after = meter.stop()
    decisions = top["requests"] - top["non_2xx"]
    return {"tool": "wrk", "decisions": decisions, "seconds": top["seconds"], "decisions_per_s": top["req_per_s"],
            "non_2xx": top["non_2xx"], "socket_errors": top["socket_errors"], "p50_ms": top["p50_ms"],
            "p99_ms": top["p99_ms"], "cpu": (before, after)}


def run_python(port: int, paths: list[str], headers: dict, clients: int, seconds: int, meter: CpuMeter) -> dict:
    load = Load(port, clients, lambda: (random.choice(paths), "{}", headers), time.monotonic() + seconds)
    log(f"Python load: {clients} keep-alive clients for {seconds} s")
    before = meter.start()
    load.run()
    after = meter.stop()
    elapsed = load.finished - load.started
    decisions = load.statuses.get(200, 0)
    return {"tool": "python", "decisions": decisions, "seconds": round(elapsed, 2),
            "decisions_per_s": round(decisions / elapsed, 1), "statuses": dict(load.statuses),
            "allowed": sum(1 for body in load.bodies if body.get("allowed")),
            "p50_ms": round(percentile(load.latencies, 0.5) * 1000, 2),
            "p99_ms": round(percentile(load.latencies, 0.99) * 1000, 2), "cpu": (before, after)}


async def exchange(conn: list, port: int, request: bytes) -> int:
    """One request on a keep-alive connection ([reader, writer], opened on demand); the status, 0 if it broke."""
    try:
        if conn[1] is None:
            conn[0], conn[1] = await asyncio.open_connection("127.0.0.1", port)
            conn[1].get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn[1].write(request)
        head = await conn[0].readuntil(b"\r\n\r\n")
        length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
        await conn[0].readexactly(int(length.group(1)) if length else 0)
        return int(head[9:12])
    except (OSError, asyncio.IncompleteReadError):
        if conn[1] is not None:
            conn[1].close()
        conn[0] = conn[1] = None
        return 0


async def paced(port: int, requests: list[bytes], clients: int, rate: float, seconds: float) -> dict:
    """Requests due every 1/rate s whatever the answers do, each on the next free connection; a latency runs
    from when its request was due, so a stall counts for every request it delays."""
    loop = asyncio.get_running_loop()
    latencies, statuses, due = [], Counter(), asyncio.Queue()

    async def client() -> None:
        conn = [None, None]
        while (when := await due.get()) is not None:
            statuses[await exchange(conn, port, random.choice(requests))] += 1
            latencies.append(loop.time() - when)
        if conn[1] is not None:
            conn[1].close()
    tasks = [asyncio.create_task(client()) for _ in range(clients)]
    start, total = loop.time() + 0.05, int(rate * seconds)
    for i in range(total):
        if (wait := start + i / rate - loop.time()) > 0:
            await asyncio.sleep(wait)
        due.put_nowait(start + i / rate)
    for _ in tasks:
        due.put_nowait(None)
    await asyncio.gather(*tasks)
    elapsed = loop.time() - start
    return {"rate": round(rate, 1), "requests": total, "achieved_per_s": round(statuses[200] / elapsed, 1),
            "statuses": dict(statuses), "p50_ms": round(percentile(latencies, 0.5) * 1000, 2),
            "p99_ms": round(percentile(latencies, 0.99) * 1000, 2), "max_ms": round(max(latencies) * 1000, 2)}


# --- the raw script

def redis_benchmark(port: int, sha: str, args, *extra: str) -> dict:
    """redis-benchmark of EVALSHA <sha> on keys like the limiter's; rps and latencies (ms)."""
    key = f"{KEY_PREFIX}:account:bench-__rand_int__"
    argv = [shutil.which("redis-benchmark") or "/usr/bin/redis-benchmark", "-p", str(port), "-n",
            str(args.redis_requests), "-c", str(args.redis_clients), "-r", str(args.workspaces), "--csv",
            "EVALSHA", sha, "1", key, *extra]
    log(f"redis-benchmark: {' '.join(argv[1:])}")
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise SetupError(f"redis-benchmark failed: {out.stderr[-500:]}")
    header, row = [line for line in out.stdout.splitlines() if line.strip()][-2:]
    values = dict(zip(json.loads(f"[{header}]"), json.loads(f"[{row}]")))
    return {"rps": float(values["rps"]), "p50_ms": float(values["p50_latency_ms"]),
            "p99_ms": float(values["p99_latency_ms"]), "argv": argv}


def limits_lua(name: str) -> str:
    import limits

    return (Path(limits.__file__).parent / "resources" / "redis" / "lua_scripts" / name).read_text()


# --- py-spy

def profile_summary(path: Path, top: int = 25) -> dict:
    """From py-spy's raw stacks of the API's worker processes: the share spent in the app (the rest is the server's
    and threads), the inclusive share of each frame under the app, and the share whose leaf is in each package."""
    total = in_app = 0
    inclusive, leaf = Counter(), Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n, frames = int(count), stack.split(";")
        total += n
        package = re.search(r"\((?:.*site-packages/|.*/work/main/|.*python3\.\d+/)?([^/:]+)", frames[-1])
        leaf[package.group(1) if package else frames[-1][:40]] += n
        app = next((i for i, f in enumerate(frames) if "App.__call__" in f), None)
        if app is None:
            continue
        in_app += n
        for name in {re.sub(r" \(.*?([^/]+/)?([^/:]+)\.py:\d+\)$", r" (\1\2)", f) for f in frames[app:]}:
            inclusive[name] += n

    def pct(counter: Counter, k: int) -> dict:
        return {key: round(100 * v / total, 1) for key, v in counter.most_common(k)} if total else {}
    return {"samples": total, "in_app_pct": round(100 * in_app / total, 1) if total else None,
            "inclusive_pct": pct(inclusive, top), "leaf_package_pct": pct(leaf, 12)}


def main() -> int:
    return run_with_children(run, parse_args())


def run(args, children: list[Child]) -> int:
    redis_url, redis_port = start_redis(children)
    log(f"database {args.database}: {args.workspaces} workspaces at tier3 (paid 100,000 cents)")
    database_url = fresh_database(args.admin_url, args.database, args.workspaces, 100_000)
    token = f"bench-{secrets.token_urlsafe(16)}"
    env = {k: v for k, v in os.environ.items() if k not in ("CELERY_BROKER_URL", "BENCH_NO_REEXEC")}
    env.update(DATABASE_URL=database_url, REDIS_URL=redis_url, BILLING_OPERATOR_TOKEN=token, PYTHONUNBUFFERED="1")
    port = start_api(children, env, args.api_workers, args.api_threads)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    paths = [f"/workspaces/{workspace_id(n)}/rate-limits/check" for n in range(1, args.workspaces + 1)]

    pending = iter(paths)  # every workspace once, so that no tier is computed (and stored) during the runs

    def each_once():
        path = next(pending, None)
        return None if path is None else (path, "{}", headers)
    warm = Load(port, args.clients, each_once, time.monotonic() + 300)
    warm.run()
    allowed = sum(1 for body in warm.bodies if body.get("allowed"))
    log(f"warm-up: {sum(warm.statuses.values())} checks, statuses {dict(warm.statuses)}, {allowed} allowed")
    if set(warm.statuses) != {200} or allowed != len(warm.bodies):
        raise SetupError(f"the warm-up's checks were not all 200 and allowed: {dict(warm.statuses)}")

    meter = CpuMeter(children, database_url, args.database)
    spy = None
    if args.py_spy:
        api = next(c for c in children if c.name == "api")
        spy = subprocess.Popen([args.py_spy, "record", "--pid", str(api.proc.pid), "--subprocesses", "--gil",
                                "--format", "raw", "--rate", "200", "--nonblocking",
                                "--output", str(RESULTS / "pyspy-ratelimit.txt")],
                               stdout=open(LOGS / "ratelimit-pyspy.log", "wb"), stderr=subprocess.STDOUT)
        time.sleep(1)
    load = run_wrk_decisions if args.loadgen == "wrk" else run_python
    top = load(port, paths, headers, args.clients, args.seconds, meter)
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=60)
    before, after = top.pop("cpu")
    top["cpu_ms_per_decision"] = per_request_ms(before, after, top["decisions"])
    top["machine_busy_cores"] = round((after["machine"] - before["machine"]) / top["seconds"], 2)
    log(f"max rate ({top['tool']}, {args.clients} connections, {args.api_workers} x {args.api_threads} API): "
        f"{top['decisions_per_s']} decisions/s, p50 {top['p50_ms']} ms, p99 {top['p99_ms']} ms")
    log(f"CPU ms per decision: {top['cpu_ms_per_decision']} (machine busy {top['machine_busy_cores']} of "
        f"{os.cpu_count()} cores)")

    half = None
    if args.paced_fraction > 0:
        rate = top["decisions_per_s"] * args.paced_fraction
        raw = [f"POST {p} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {headers['Authorization']}\r\n"
               f"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}".encode() for p in paths]
        log(f"paced: {rate:.0f} decisions/s open loop for {args.seconds} s on {args.paced_clients} connections")
        half = asyncio.run(paced(port, raw, args.paced_clients, rate, args.seconds))
        log(f"paced: {half['achieved_per_s']} answered 200 per s, p50 {half['p50_ms']} ms, p99 {half['p99_ms']} ms, "
            f"max {half['max_ms']} ms; statuses {half['statuses']}")

    for child in [c for c in children if c.name == "api"]:
        child.stop()  # Redis to itself for the baseline
    children[:] = [c for c in children if c.name != "api"]

    from domain.store.limiter import DECIDE

    r = redis.Redis.from_url(redis_url)
    now = f"{time.time():.6f}"
    decide = redis_benchmark(redis_port, r.script_load(DECIDE), args, now, "10000", "60", "1")
    acquire = redis_benchmark(redis_port, r.script_load(limits_lua("acquire_moving_window.lua")), args,
                              now, "10000", "60", "1")
    ratio = top["decisions_per_s"] / decide["rps"]
    p99 = half["p99_ms"] if half else top["p99_ms"]
    result = {"max_rate": top, "paced": half, "redis_benchmark_decide": decide,
              "redis_benchmark_limits_acquire": acquire, "ratio": round(ratio, 4),
              "ratio_vs_limits_acquire": round(top["decisions_per_s"] / acquire["rps"], 4),
              "target_ratio": TARGET_RATIO, "target_p99_ms": TARGET_P99_MS, "cpus": os.cpu_count(),
              "redis_version": r.info()["redis_version"],
              "config": {k: v for k, v in vars(args).items() if k != "admin_url"}}
    if args.py_spy:
        result["py_spy"] = profile_summary(RESULTS / "pyspy-ratelimit.txt")
        log(f"py-spy: {result['py_spy']['in_app_pct']}% of the API's GIL samples in the app, the rest the "
            "server's Python; inclusive % of all samples: " + json.dumps(result["py_spy"]["inclusive_pct"]))
        log("py-spy (leaf package %): " + json.dumps(result["py_spy"]["leaf_package_pct"]))
    path = write_result("ratelimit", result)
    log(f"redis-benchmark EVALSHA of the limiter's script: {decide['rps']:.0f}/s, p99 {decide['p99_ms']} ms "
        f"(limits' acquire_moving_window.lua alone: {acquire['rps']:.0f}/s)")
    met = "met" if ratio >= TARGET_RATIO else "NOT met"
    log(f"ratio API / raw script: {ratio:.3f}x (target {TARGET_RATIO}x: {met})"
        f"; p99 {p99} ms {'paced' if half else 'at max rate'} (target < {TARGET_P99_MS} ms: "
        f"{'met' if p99 < TARGET_P99_MS else 'NOT met'}); written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
