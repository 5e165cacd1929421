"""bench/holds: what a hold costs an agent's critical path, beside a balance read in the same run (issue 16).

One service (the API as `billing api` runs it, a worker), one database of workspaces with large balances and a
user key each. Rounds of three closed-loop phases from the same clients, one after another: balance reads with a user's
key (the hot read), hold creations (201, synchronous: the account locked, what is available re-checked, the
hold written and committed), then one capture of each hold (202: the capture queued as an operation). Per
phase: requests/s and p50/p99 latency; the rows give each hold call's cost per request as a multiple of the
balance read's in the same round, the median round's (target ≤ 1.5×). The capture's judged rows count its
posting too: the worker applies the captures on the same two cores while the phase runs, and the CPU row waits
for them. Beside them, to show where a capture's cost goes (no target of their own): each round also captures a
second set of holds with the worker stopped (SIGSTOP: the accept alone, what the agent waits for), then resumes
it and meters the postings of that set on their own. Afterwards every capture must have succeeded, the balances must equal their
entries and the held cents what the open holds reserve (`billing audit`).
"""
import argparse
import os
import secrets
import signal
import sys
import threading
import time
from contextlib import contextmanager

import psycopg

from bench.harness import (Child, CpuMeter, Load, SetupError, audit, fresh_database, log, per_request_ms, percentile,
                           row, run_with_children, seed_api_keys, start_api, start_redis, user_key, workspace_id,
                           write_result)

TARGET = 1.5  # issue 16: create and capture within 1.5x of a balance read
SERVICE = ("api", "worker", "postgres")  # the CPU a request costs the service: API, worker, its database backends


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--database", default="billing_bench_holds")
    p.add_argument("--workspaces", type=int, default=200)
    p.add_argument("--requests", type=int, default=3000, help="requests per phase, over all rounds")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3, help="rounds of the three phases in turn (the median counts)")
    p.add_argument("--concurrency", type=int, default=2, help="worker processes")
    p.add_argument("--api-workers", type=int, default=2)
    p.add_argument("--api-threads", type=int, default=4)
    return p.parse_args()


def main() -> int:
    return run_with_children(run, parse_args())


def phase(port: int, clients: int, requests: list[tuple], meter: CpuMeter | None = None,
          settled=lambda: None) -> tuple[Load, dict]:
    """Run the requests (method, path, body, headers) from `clients` closed-loop clients; the load and its figures,
    with the CPU each part spent per request from the start until the load ended and `settled()` returned (a
    capture's: until the worker applied them all)."""
    jobs, lock = iter(requests), threading.Lock()

    def next_request():
        with lock:
            return next(jobs, None)
    load = Load(port, clients, next_request, time.monotonic() + 600)
    before = meter.start() if meter else None
    load.run()
    seconds = load.finished - load.started
    settled()
    figures = {"requests": len(requests), "statuses": {str(k): v for k, v in load.statuses.items()},
               "per_s": round(len(load.latencies) / seconds, 1),
               "p50_ms": round(percentile(load.latencies, 0.5) * 1000, 2),
               "p99_ms": round(percentile(load.latencies, 0.99) * 1000, 2)}
    if meter:
        figures["cpu_ms"] = service_cpu(before, meter.stop(), len(requests))
    return load, figures


def applied(database_url: str, timeout: float = 120) -> None:
    """Wait until no capture is left queued."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(database_url, autocommit=True) as conn:
        while conn.execute("SELECT count(*) FROM operations WHERE kind = 'hold_capture' AND status IN "
                           "('queued', 'running')").fetchone()[0] and time.monotonic() < deadline:
            time.sleep(0.05)


def _cpu_text(cpu_ms: dict) -> str:
    return (f"{cpu_ms['service']} ms CPU (API {cpu_ms['api']}, worker {cpu_ms['worker']}, "
            f"PostgreSQL {cpu_ms['postgres']})")


@contextmanager
def held_back(worker: Child):
    """The worker's whole process group stopped (SIGSTOP) while the block runs, continued after."""
    os.killpg(worker.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(worker.proc.pid, signal.SIGCONT)


def service_cpu(before: dict, after: dict, requests: int) -> dict:
    """per_request_ms, with `service`: what the API, the worker and their PostgreSQL backends spent."""
    cpu = per_request_ms(before, after, requests)
    return cpu | {"service": round(sum(cpu[k] for k in SERVICE), 3)}


def postings(meter: CpuMeter, database_url: str, count: int) -> dict:
    """The CPU per capture the worker and the database spent applying what was queued (the worker just resumed)."""
    before = meter.start()
    applied(database_url)
    return service_cpu(before, meter.stop(), count)


def _median_round(rounds: list[dict], name: str) -> tuple[dict, dict]:
    """(read, phase) figures of the round whose phase-to-read cost ratio is the median."""
    ranked = sorted(rounds, key=lambda r: r["read"]["per_s"] / r[name]["per_s"])
    middle = ranked[len(ranked) // 2]
    return middle["read"], middle[name]


def run(args, children: list[Child]) -> int:
    w = args.workspaces
    database_url = fresh_database(args.admin_url, args.database, w, 10**9)
    seed_api_keys(database_url, w)
    redis_url, _ = start_redis(children)
    token = f"bench-{secrets.token_urlsafe(16)}"
    env = {k: v for k, v in os.environ.items() if k not in ("CELERY_BROKER_URL", "BENCH_NO_REEXEC")}
    env.update(DATABASE_URL=database_url, REDIS_URL=redis_url, BILLING_OPERATOR_TOKEN=token, PYTHONUNBUFFERED="1",
               BILLING_API_RATE_LIMIT="0")
    from worker.cli import ALL_QUEUES, worker_argv

    worker = Child("worker", worker_argv(ALL_QUEUES, args.concurrency, name=f"bench-{token[-6:]}@%h"), env)
    children.append(worker)
    port = start_api(children, env, args.api_workers, args.api_threads)
    worker.wait_for(lambda: " ready." in worker.text(), 60, "the worker")
    meter = CpuMeter(children, database_url, args.database)
    operator = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    n = args.requests

    reads = [("GET", f"/workspaces/{workspace_id(i % w + 1)}/billing/balance", None,
              {"Authorization": f"Bearer {user_key(i % w + 1)}"}) for i in range(n)]
    phase(port, args.clients, reads[: n // 4])  # warm-up: connections, prepared statements
    # Rounds of the three phases in turn, so a machine busy with something else for a while weighs on all three
    # alike; each row's cost is the median round's.
    rounds, operations, per_round = [], [], n // args.rounds
    for r in range(args.rounds):
        log(f"round {r + 1}/{args.rounds}: {per_round} balance reads, hold creations, captures from {args.clients} clients")
        _, read = phase(port, args.clients, reads[:per_round], meter)
        creates = [("POST", f"/workspaces/{workspace_id(i % w + 1)}/billing/holds",
                    '{"amountCents": 100, "expiresInSeconds": 3600}', operator) for i in range(per_round)]
        made, create = phase(port, args.clients, creates, meter)
        holds = [(h["workspaceId"], h["id"]) for h in made.bodies if h.get("status") == "active"]
        if len(holds) != per_round:
            raise SetupError(f"{len(holds)} of {per_round} holds created: {create['statuses']}")
        captures = [("POST", f"/workspaces/{ws}/billing/holds/{hold}/capture", '{"amountCents": 60}', operator)
                    for ws, hold in holds]
        queued, capture = phase(port, args.clients, captures, meter, lambda: applied(database_url))
        operations += [body["id"] for body in queued.bodies if body.get("status") in ("queued", "running", "succeeded")]
        more, _ = phase(port, args.clients, creates)
        if sum(h.get("status") == "active" for h in more.bodies) != per_round:
            raise SetupError(f"the second set of holds: {more.statuses}")
        with held_back(worker):
            queued, accept = phase(port, args.clients, [
                ("POST", f"/workspaces/{h['workspaceId']}/billing/holds/{h['id']}/capture", '{"amountCents": 60}',
                 operator) for h in more.bodies if h.get("status") == "active"], meter)
        operations += [body["id"] for body in queued.bodies if body.get("status") == "queued"]
        posting = postings(meter, database_url, len(queued.bodies))
        log(f"  read {read}\n  create {create}\n  capture {capture}\n  capture, worker stopped {accept}\n"
            f"  its postings after {posting}")
        rounds.append({"read": read, "create": create, "capture": capture, "capture_accept": accept,
                       "capture_posting": posting})
    with psycopg.connect(database_url, autocommit=True) as conn:
        deadline = time.monotonic() + 300
        while True:
            done = conn.execute("SELECT count(*) FILTER (WHERE status = 'succeeded'), count(*) FILTER (WHERE status = "
                                "'failed') FROM operations WHERE id = ANY(%s)", (operations,)).fetchone()
            if sum(done) >= len(operations) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    checked = audit(env)
    total = 2 * per_round * args.rounds  # two sets of captures a round
    ok = len(operations) == total and done == (total, 0) and checked["ok"]
    rows = []
    for name, phase_name in (("hold create (201)", "create"), ("hold capture (202, queued)", "capture")):
        # per-request cost against a balance read's, same clients, same round; the median round's
        read, figures = _median_round(rounds, phase_name)
        cost = read["per_s"] / figures["per_s"]
        rows.append(row(f"{name} vs a balance read", f"{figures['per_s']:.0f} req/s, p50 {figures['p50_ms']} ms",
                        f"balance read {read['per_s']:.0f} req/s, p50 {read['p50_ms']} ms (same run, same clients)",
                        round(cost, 3), f"≤ {TARGET}× the read's cost", cost <= TARGET and ok))
    for name, phase_name in (("hold create", "create"), ("hold capture, applied included", "capture")):
        # the CPU the service spent per request (API, worker, its PostgreSQL backends), the median round's
        ratios = sorted(r[phase_name]["cpu_ms"]["service"] / r["read"]["cpu_ms"]["service"] for r in rounds)
        middle = next(r for r in rounds
                      if r[phase_name]["cpu_ms"]["service"] / r["read"]["cpu_ms"]["service"] == ratios[len(ratios) // 2])
        cpu = ratios[len(ratios) // 2]
        rows.append(row(f"{name}: the service's CPU per request vs a balance read's",
                        _cpu_text(middle[phase_name]["cpu_ms"]), f"balance read {_cpu_text(middle['read']['cpu_ms'])}",
                        round(cpu, 3), f"≤ {TARGET}× the read's", cpu <= TARGET and ok))
    read, accept = _median_round(rounds, "capture_accept")
    posting = next(r["capture_posting"] for r in rounds if r["capture_accept"] is accept)
    rows.append(row("hold capture, the accept alone (worker stopped): what the agent waits for, vs a balance read",
                    f"{accept['per_s']:.0f} req/s, p50 {accept['p50_ms']} ms; {_cpu_text(accept['cpu_ms'])}",
                    f"balance read {read['per_s']:.0f} req/s, p50 {read['p50_ms']} ms; {_cpu_text(read['cpu_ms'])}",
                    round(read["per_s"] / accept["per_s"], 3), "— (shows where a capture's cost goes)", None))
    rows.append(row("hold capture, its posting applied afterwards (worker resumed)", _cpu_text(posting),
                    "—", round(posting["service"] / read["cpu_ms"]["service"], 3),
                    "— (the posting's CPU per capture, as a multiple of the read's)", None))
    path = write_result("holds", {"rounds": rounds,
                                  "captures_succeeded": done[0], "captures_failed": done[1], "audit": checked,
                                  "summary": rows, "cpus": os.cpu_count(),
                                  "config": {k: v for k, v in vars(args).items() if k != "admin_url"}})
    log(f"captures succeeded {done[0]}, failed {done[1]}; audit {'ok' if checked['ok'] else 'FAILED'}; "
        f"written to {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
