"""bench/balance_read: GET /workspaces/{id}/billing/balance req/s and p99, beside pgbench running its SQL.

Creates a fresh database (--users users, each with a workspace, a default account and an API key), starts
a private redis-server, the real API and a real worker, and catches in process the SQL one balance request
runs (the key lookup, then the workspace, membership, link and account reads, each in its transaction).
The ceiling is pgbench running exactly those transactions for a random user. Then, over keep-alive
connections with each user's own key on their own workspace: the most req/s the API serves (wrk when
installed, else a lean asyncio client), and p50/p99 at half that rate, paced open-loop (latency counted
from when each request was due). Ends with `billing audit`. See bench/README.md.
"""
import argparse
import asyncio
import hashlib
import os
import random
import re
import shutil
import socket
import sys
from collections import Counter

from bench.harness import (Child, audit, capture_sql, fresh_database, log, percentile, pgbench_script,
                           row, run_pgbench, run_with_children, run_wrk, seed_api_keys, service_env, start_api,
                           start_redis_on, start_worker, user_key, workspace_id, write_result, wrk_script)

TARGET_RATIO = 0.5
TARGET_P99_MS = 10.0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--database", default="billing_bench_balance_read")
    p.add_argument("--users", type=int, default=1000, help="users, workspaces and keys; requests pick one at random")
    p.add_argument("--seconds", type=int, default=20, help="length of the max-rate run and of the paced run")
    p.add_argument("--connections", type=int, default=8, help="keep-alive connections of the max-rate run")
    p.add_argument("--paced-connections", type=int, default=16)
    p.add_argument("--pgbench-clients", type=int, default=4)
    p.add_argument("--pgbench-seconds", type=int, default=15)
    p.add_argument("--api-workers", type=int, default=2)
    p.add_argument("--api-threads", type=int, default=4)
    p.add_argument("--redis-port", type=int, default=6402)
    p.add_argument("--no-wrk", action="store_true", help="use the asyncio client for the max-rate run too")
    return p.parse_args()


def main() -> int:
    return run_with_children(run, parse_args())


def user_row_literals(n: int) -> dict[str, str]:
    """The literals of user n's rows in the caught SQL, and the pgbench expressions naming user :n instead."""
    md5 = lambda s: hashlib.md5(s.encode()).hexdigest()  # noqa: E731
    key_hash = hashlib.sha256(user_key(n).encode()).hexdigest()
    return {f"'ws_{md5(f'w{n}')}'": "('ws_' || md5('w' || CAST(:n AS text)))",
            f"'ba_{md5(f'a{n}')}'": "('ba_' || md5('a' || CAST(:n AS text)))",
            f"'usr_{md5(f'u{n}')}'": "('usr_' || md5('u' || CAST(:n AS text)))",
            f"'\\x{key_hash}'::bytea": "sha256(convert_to('bk_bench_' || CAST(:n AS text), 'UTF8'))"}


def balance_request(n: int) -> tuple[str, dict]:
    return f"/workspaces/{workspace_id(n)}/billing/balance", {"Authorization": f"Bearer {user_key(n)}"}


# --- a lean HTTP/1.1 keep-alive client (asyncio streams, prebuilt requests)

def raw_requests(port: int, users: int) -> list[bytes]:
    out = []
    for n in range(1, users + 1):
        path, headers = balance_request(n)
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        out.append(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{head}\r\n".encode())
    return out


class Connection:
    def __init__(self, port: int) -> None:
        self.port, self.reader, self.writer = port, None, None

    async def exchange(self, request: bytes) -> int:
        """Send one request, read its answer; the status (0 for a broken connection, then reopened)."""
        try:
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
                self.writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.writer.write(request)
            head = await self.reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
            await self.reader.readexactly(int(length.group(1)) if length else 0)
            if re.search(rb"(?i)\r\nconnection: *close", head):
                self.close()
            return int(head[9:12])
        except (OSError, asyncio.IncompleteReadError):
            self.close()
            return 0

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def closed_loop(port: int, requests: list[bytes], connections: int, seconds: float) -> dict:
    """As fast as the API answers: each connection sends its next request when the last one is answered."""
    loop = asyncio.get_running_loop()
    latencies, statuses = [], Counter()
    deadline = loop.time() + seconds

    async def client() -> None:
        conn = Connection(port)
        while loop.time() < deadline:
            start = loop.time()
            statuses[await conn.exchange(random.choice(requests))] += 1
            latencies.append(loop.time() - start)
        conn.close()
    start = loop.time()
    await asyncio.gather(*(client() for _ in range(connections)))
    elapsed = loop.time() - start
    return {"tool": "asyncio", "req_per_s": round(statuses[200] / elapsed, 1), "statuses": dict(statuses),
            "p50_ms": round(percentile(latencies, 0.5) * 1000, 2),
            "p99_ms": round(percentile(latencies, 0.99) * 1000, 2)}


async def open_loop(port: int, requests: list[bytes], connections: int, rate: float, seconds: float) -> dict:
    """Requests due every 1/rate s whatever the answers do; each takes the next free connection, and its
    latency runs from when it was due (so a stall counts for every request it delays)."""
    loop = asyncio.get_running_loop()
    latencies, statuses, due = [], Counter(), asyncio.Queue()

    async def client() -> None:
        conn = Connection(port)
        while (when := await due.get()) is not None:
            statuses[await conn.exchange(random.choice(requests))] += 1
            latencies.append(loop.time() - when)
        conn.close()
    clients = [asyncio.create_task(client()) for _ in range(connections)]
    start = loop.time() + 0.05
    total = int(rate * seconds)
    for i in range(total):
        when = start + i / rate
        if (wait := when - loop.time()) > 0:
            await asyncio.sleep(wait)
        due.put_nowait(when)
    for _ in clients:
        due.put_nowait(None)
    await asyncio.gather(*clients)
    elapsed = loop.time() - start
    return {"rate": round(rate, 1), "requests": total, "achieved_per_s": round(statuses[200] / elapsed, 1),
            "statuses": dict(statuses), "p50_ms": round(percentile(latencies, 0.5) * 1000, 2),
            "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
            "max_ms": round(max(latencies) * 1000, 2)}


def run(args, children: list[Child]) -> int:
    log(f"database {args.database}: {args.users} users, each with a workspace, an account and an API key")
    database_url = fresh_database(args.admin_url, args.database, args.users, 1000)
    seed_api_keys(database_url, args.users)
    redis_url = f"redis://127.0.0.1:{args.redis_port}/0"
    start_redis_on(children, args.redis_port)
    env = service_env(database_url, redis_url)

    path, headers = balance_request(1)
    transactions = capture_sql(env, "GET", path, headers)
    script = pgbench_script(transactions, user_row_literals(1), header=f"\\set n random(1, {args.users})")
    log(f"the endpoint's SQL: {len(transactions)} transactions, "
        f"{sum(len(t['statements']) for t in transactions)} statements")
    ceiling = run_pgbench(database_url, script, args.pgbench_clients, args.pgbench_seconds, "balance")
    log(f"ceiling: {ceiling['tps']:.0f} requests' worth of SQL per second (pgbench -c {args.pgbench_clients})")

    start_worker(children, env, "worker", 2, "bench-balance-read@%h")
    port = start_api(children, env, args.api_workers, args.api_threads)
    requests = raw_requests(port, args.users)
    warm = asyncio.run(closed_loop(port, requests, args.connections, 3))
    log(f"warm-up: {warm['statuses']}")
    if shutil.which("wrk") and not args.no_wrk:  # less CPU per request than any Python client on the same 2 cores
        script = wrk_script("balance_read-wrk", "the balance of a random user's workspace with that user's key", [
            ("GET", path, headers, "") for path, headers in map(balance_request, range(1, args.users + 1))])
        log(f"wrk -t1 -c{args.connections} -d{args.seconds}s")
        top = run_wrk(port, script, threads=1, connections=args.connections, seconds=args.seconds,
                      name="balance_read-wrk")
    else:
        log(f"asyncio client, {args.connections} connections, {args.seconds} s")
        top = asyncio.run(closed_loop(port, requests, args.connections, args.seconds))
    log(f"max: {top['req_per_s']} req/s ({top['tool']}), p50 {top['p50_ms']} ms, p99 {top['p99_ms']} ms")
    log(f"paced at half that: {top['req_per_s'] / 2:.0f} req/s for {args.seconds} s, open loop")
    half = asyncio.run(open_loop(port, requests, args.paced_connections, top["req_per_s"] / 2, args.seconds))
    log(f"half load: {half['achieved_per_s']} req/s answered 200, p50 {half['p50_ms']} ms, p99 {half['p99_ms']} ms, "
        f"max {half['max_ms']} ms; statuses {half['statuses']}")
    for child in reversed(children):
        child.stop()
    children.clear()
    checked = audit(env)

    ratio = top["req_per_s"] / ceiling["tps"]
    answered_ok = set(half["statuses"]) == {200} and not top.get("non_2xx") and set(top.get("statuses", [200])) == {200}
    result = {"max": top, "half_load": half, "ceiling": ceiling | {"sql": script}, "ratio": round(ratio, 4),
              "target_ratio": TARGET_RATIO, "target_p99_ms": TARGET_P99_MS, "all_200": answered_ok,
              "audit": checked, "cpus": os.cpu_count(),
              "config": {k: v for k, v in vars(args).items() if k != "admin_url"},
              "summary": [
                  row("balance read", f"{top['req_per_s']:.0f} req/s", f"{ceiling['tps']:.0f} tps (pgbench, same SQL)",
                      ratio, "≥ 0.5×", ratio >= TARGET_RATIO),
                  row("balance read, p99 at half load", f"p99 {half['p99_ms']} ms at {half['rate']:.0f} req/s",
                      "—", None, "< 10 ms", half["p99_ms"] < TARGET_P99_MS, value=half["p99_ms"])]}
    out = write_result("balance_read", result)
    log(f"ratio {ratio:.3f}x (target {TARGET_RATIO}x); p99 at half load {half['p99_ms']} ms (target < "
        f"{TARGET_P99_MS} ms); every answer 200: {answered_ok}; written to {out}")
    return 0 if checked["ok"] and answered_ok else 1


if __name__ == "__main__":
    sys.exit(main())
