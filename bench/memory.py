"""bench/memory: peak RSS of each API process and each worker process under a mixed load.

Creates a fresh database (--workspaces users, each with a workspace, an account and an API key), starts a
private redis-server, the real API (granian) and a real worker (Celery, prefork), and drives a mix for
--seconds from keep-alive clients: credits, usage batches of 1000 events, rate-limit checks (operator),
balances, transaction pages, summaries and usage overviews (each user's own key). While it runs and until
the worker has applied everything, it reads VmHWM (the kernel's peak resident set) of every process in both
trees from /proc/<pid>/status. Targets: every API process under 150 MB, every worker process under 200 MB.
Ends with `billing audit`. See bench/README.md.
"""
import argparse
import itertools
import json
import os
import random
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime

import psycopg

from bench.harness import (Child, Load, audit, fresh_database, log, process_memory, row, run_with_children,
                           seed_api_keys, service_env, start_api, start_redis_on, start_worker, user_key, wait_until,
                           workspace_id, write_result)

TARGET_API_MB = 150
TARGET_WORKER_MB = 200
MIX = {"credit": 3, "usage": 1, "check": 3, "balance": 4, "transactions": 3, "summary": 1, "overview": 1}
UNFINISHED = "SELECT count(*) FROM operations WHERE status NOT IN ('succeeded', 'failed')"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--database", default="billing_bench_memory")
    p.add_argument("--workspaces", type=int, default=1000)
    p.add_argument("--seconds", type=int, default=60)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--concurrency", type=int, default=2, help="worker processes")
    p.add_argument("--api-workers", type=int, default=2)
    p.add_argument("--api-threads", type=int, default=4)
    p.add_argument("--redis-port", type=int, default=6406)
    p.add_argument("--drain-timeout", type=int, default=600)
    p.add_argument("--seed", type=int, default=1)
    return p.parse_args()


def main() -> int:
    return run_with_children(run, parse_args())


class Requests:
    """The mixed load's next_request: kinds drawn by MIX's weights, each on a random workspace."""

    def __init__(self, token: str, workspaces: int, seed: int) -> None:
        self.operator = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.workspaces, self.rng, self.lock = workspaces, random.Random(seed), threading.Lock()
        self.numbers, self.sent = itertools.count(), Counter()
        self.kinds = [kind for kind, weight in MIX.items() for _ in range(weight)]

    def __call__(self):
        with self.lock:
            kind, n, i = self.rng.choice(self.kinds), self.rng.randint(1, self.workspaces), next(self.numbers)
            self.sent[kind] += 1
        ws, user = f"/workspaces/{workspace_id(n)}", {"Authorization": f"Bearer {user_key(n)}"}
        if kind == "credit":
            return ("POST", f"{ws}/billing/credits", json.dumps({"amountCents": 100, "description": "memory"}),
                    self.operator | {"Idempotency-Key": f"memory-{i}"})
        if kind == "usage":
            now = datetime.now(UTC).isoformat()
            events = [{"eventId": f"m{i}-{e}", "metric": "tokens", "quantity": 100, "amountCents": 1, "occurredAt": now}
                      for e in range(1000)]
            return "POST", f"{ws}/billing/usage", json.dumps({"events": events}), self.operator
        if kind == "check":
            return "POST", f"{ws}/rate-limits/check", "{}", self.operator
        path = {"balance": "/billing/balance", "transactions": "/billing/transactions?limit=50",
                "summary": "/billing/summary", "overview": "/billing/usage-overview"}[kind]
        return "GET", ws + path, None, user


class Peaks:
    """The highest VmHWM seen per process of a tree, sampled every half second in a thread."""

    def __init__(self, trees: dict[str, Child]) -> None:
        self.trees, self.seen = trees, {name: {} for name in trees}
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def sample(self) -> None:
        for name, child in self.trees.items():
            for pid, info in process_memory(child).items():
                known = self.seen[name].get(pid)
                if known is None or info["hwm_mb"] >= known["hwm_mb"]:
                    self.seen[name][pid] = info

    def _sample(self) -> None:
        while not self.stopping.wait(0.5):
            self.sample()

    def __enter__(self) -> "Peaks":
        self.sample()
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.thread.join()
        self.sample()

    def peak(self, name: str) -> dict:
        return max(self.seen[name].values(), key=lambda info: info["hwm_mb"])


def run(args, children: list[Child]) -> int:
    log(f"database {args.database}: {args.workspaces} users, workspaces and keys")
    database_url = fresh_database(args.admin_url, args.database, args.workspaces, 10**9)
    seed_api_keys(database_url, args.workspaces)
    redis_url = f"redis://127.0.0.1:{args.redis_port}/0"
    start_redis_on(children, args.redis_port)
    env = service_env(database_url, redis_url)
    worker = start_worker(children, env, "worker", args.concurrency, "bench-memory@%h")
    port = start_api(children, env, args.api_workers, args.api_threads)
    api = next(c for c in children if c.name == "api")

    requests = Requests(env["BILLING_OPERATOR_TOKEN"], args.workspaces, args.seed)
    with Peaks({"api": api, "worker": worker}) as peaks:
        start_mb = {name: max(info["hwm_mb"] for info in seen.values()) for name, seen in peaks.seen.items()
                    if seen}
        log(f"mixed load {dict(MIX)} from {args.clients} clients for {args.seconds} s; peaks at start {start_mb}")
        load = Load(port, args.clients, requests, time.monotonic() + args.seconds)
        load.run()
        log(f"sent {dict(requests.sent)}; statuses {dict(load.statuses)}; waiting for the worker")
        with psycopg.connect(database_url, autocommit=True) as conn:
            wait_until(lambda: conn.execute(UNFINISHED).fetchone()[0] == 0, args.drain_timeout,
                       "every operation to finish")
    for child in reversed(children):
        child.stop()
    children.clear()
    checked = audit(env)

    api_peak, worker_peak = peaks.peak("api"), peaks.peak("worker")
    errors = {status: n for status, n in load.statuses.items() if not (isinstance(status, int) and status < 300)}
    result = {"api": {"peak": api_peak, "processes": peaks.seen["api"]},
              "worker": {"peak": worker_peak, "processes": peaks.seen["worker"]},
              "sent": dict(requests.sent), "statuses": {str(k): v for k, v in load.statuses.items()},
              "seconds": args.seconds, "target_api_mb": TARGET_API_MB, "target_worker_mb": TARGET_WORKER_MB,
              "audit": checked, "cpus": os.cpu_count(),
              "config": {k: v for k, v in vars(args).items() if k != "admin_url"},
              "summary": [row("memory, API process", f"{api_peak['hwm_mb']:.0f} MB peak RSS", "—", None,
                              f"< {TARGET_API_MB} MB", api_peak["hwm_mb"] < TARGET_API_MB, value=api_peak["hwm_mb"]),
                          row("memory, worker process", f"{worker_peak['hwm_mb']:.0f} MB peak RSS", "—", None,
                              f"< {TARGET_WORKER_MB} MB", worker_peak["hwm_mb"] < TARGET_WORKER_MB,
                              value=worker_peak["hwm_mb"])]}
    out = write_result("memory", result)
    for name, peak in (("api", api_peak), ("worker", worker_peak)):
        log(f"{name}: peak RSS {peak['hwm_mb']} MB ({peak['role']} process: {peak['cmd'][:60]}...); every process: "
            + ", ".join(f"{i['role']} {i['hwm_mb']}" for i in peaks.seen[name].values()))
    log(f"answers other than 2xx: {errors or 'none'}; written to {out}")
    return 0 if checked["ok"] and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
