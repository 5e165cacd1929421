"""bench/holds: what a hold costs an agent's critical path, beside a balance read in the same run (issue 16).

One service (the API as `billing api` runs it, a worker), one database of workspaces with large balances and a user
key each. Rounds of closed-loop phases driven by wrk (a C client: the load generator's CPU per request is small
beside the service's on the same cores, so it does not pull the ratios toward 1), one after another: balance reads
with a user's key (the hot read), hold creations (201, synchronous: the account locked, what is available
re-checked, the hold written and committed), then captures of those holds, each once (202: the capture queued as an
operation) with the worker stopped (SIGSTOP): the accept, what the agent waits for. Per phase: requests/s and
p50/p99 latency, and the CPU the service spent per request (API, worker, its PostgreSQL backends); the rows give
each hold call's cost per request as a multiple of the balance read's in the same round, the median round's (target
≤ 1.5×). The capture's posting is queued by design, off the agent's path: once the worker resumes, the postings of
that set are metered on their own, and each round also captures a second set with the worker running on the same two
cores, its CPU counted until every capture is applied (rows without a target: where a capture's whole cost goes).
Each round also runs the read and the creation against the floor app (bench/floor.py holds_app: the same statements
in the thinnest Falcon + psycopg app, granian in the API's shape): what Python can do, the floor of the ratio.
Afterwards every capture must have succeeded, the balances must equal their entries and the held cents what the open
holds reserve (`billing audit`).
"""
import argparse
import os
import secrets
import signal
import sys
import time
from contextlib import contextmanager

import psycopg

from bench.floors import granian_argv
from bench.harness import (Child, CpuMeter, SetupError, audit, free_port, fresh_database, healthy, log,
                           per_request_ms, row, run_with_children, run_wrk, seed_api_keys, start_api, start_redis,
                           user_key, workspace_id, write_result, wrk_script)

TARGET = 1.5  # issue 16: create and capture within 1.5x of a balance read
SERVICE = ("api", "worker", "postgres")  # the CPU a request costs the service: API, worker, its database backends
FLOOR = ("floor", "postgres")  # and the floor app's (bench/floor.py holds_app)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--database", default="billing_bench_holds")
    p.add_argument("--workspaces", type=int, default=200)
    p.add_argument("--seconds", type=int, default=4,
                   help="each read and create phase (whole seconds, as wrk takes them); the captures of a set run "
                        "half as long (they are faster, and each hold is captured once)")
    p.add_argument("--connections", type=int, default=8, help="wrk's connections")
    p.add_argument("--wrk-threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3, help="rounds of the phases in turn (the median counts)")
    p.add_argument("--concurrency", type=int, default=2, help="worker processes")
    p.add_argument("--api-workers", type=int, default=2)
    p.add_argument("--api-threads", type=int, default=4)
    return p.parse_args()


def main() -> int:
    return run_with_children(run, parse_args())


def applied(database_url: str, timeout: float = 120) -> None:
    """Wait until no capture is left queued."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(database_url, autocommit=True) as conn:
        while conn.execute("SELECT count(*) FROM operations WHERE kind = 'hold_capture' AND status IN "
                           "('queued', 'running')").fetchone()[0] and time.monotonic() < deadline:
            time.sleep(0.05)


def analyze(database_url: str) -> None:
    """The statistics autovacuum keeps as the tables grow (the server this runs on may have it off): PostgreSQL
    plans the API's prepared statements from them, and keeps a plan only while they say it is no dearer than one
    made for each call's values."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("ANALYZE")


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


def service_cpu(before: dict, after: dict, requests: int, parts: tuple[str, ...] = SERVICE) -> dict:
    """per_request_ms, with `service`: what the API, the worker and their PostgreSQL backends spent (`parts`; the
    floor app's phases: the floor and its backends)."""
    cpu = per_request_ms(before, after, requests)
    return cpu | {"service": round(sum(cpu[k] for k in parts), 3)}


def postings(meter: CpuMeter, database_url: str, count: int) -> dict:
    """The CPU per capture the worker and the database spent applying what was queued (the worker just resumed)."""
    before = meter.start()
    applied(database_url)
    return service_cpu(before, meter.stop(), count)


def _median_round(rounds: list[dict], ratio) -> tuple[dict, float]:
    """The round whose ratio (a function of a round) is the median, and that ratio."""
    middle = sorted(rounds, key=ratio)[len(rounds) // 2]
    return middle, ratio(middle)


def _by_req_per_s(phase: str, read: str = "read"):
    """A round's cost ratio of `phase` to `read` by requests/s."""
    return lambda r: r[read]["req_per_s"] / r[phase]["req_per_s"]


def _by_cpu(phase: str, read: str = "read"):
    """A round's ratio of the CPU per request `phase` cost the service (or the floor app) to `read`'s."""
    return lambda r: r[phase]["cpu_ms"]["service"] / r[read]["cpu_ms"]["service"]


class Phases:
    """wrk runs against the API, each metered: the CPU per request from its start until it ended and `settled()`
    returned (a capture's with the worker running: until the worker applied them all)."""

    def __init__(self, args, port: int, meter: CpuMeter, database_url: str) -> None:
        self.args, self.port, self.meter, self.database_url = args, port, meter, database_url

    def run(self, script, seconds: int, name: str, settled=lambda: None, port: int | None = None,
            parts: tuple[str, ...] = SERVICE) -> dict:
        before = self.meter.start()
        figures = run_wrk(port or self.port, script, threads=self.args.wrk_threads,
                          connections=self.args.connections, seconds=seconds, name=f"holds-{name}")
        settled()
        return figures | {"cpu_ms": service_cpu(before, self.meter.stop(), figures["requests"], parts)}

    def now(self):
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            return conn.execute("SELECT clock_timestamp()").fetchone()[0]

    def captures(self, operator: dict, name: str, seconds: int, since, settled=lambda: None) -> dict:
        """Capture, each once in turn, the holds created since `since` (a create phase's)."""
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            holds = conn.execute("SELECT workspace_id, id FROM holds WHERE created_at >= %s AND status = 'active' "
                                 "AND capture_operation_id IS NULL ORDER BY created_at", (since,)).fetchall()
            queued_before = conn.execute("SELECT count(*) FROM operations WHERE kind = 'hold_capture'").fetchone()[0]
        script = wrk_script(f"holds-{name}", "capture each hold once", [
            ("POST", f"/workspaces/{ws}/billing/holds/{hold}/capture", operator, '{"amountCents": 60}')
            for ws, hold in holds], in_turn=self.args.wrk_threads)
        figures = self.run(script, seconds, name, settled)
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            queued = conn.execute("SELECT count(*) FROM operations WHERE kind = 'hold_capture'").fetchone()[0]
        figures["queued"] = queued - queued_before
        # the script's first request is never sent (wrk checks the script with it); more than that, or a hold
        # captured twice (the list ran out), would make this phase another one
        if figures["requests"] - figures["queued"] > self.args.connections or figures["non_2xx"]:
            raise SetupError(f"{name}: {figures['requests']} requests queued {figures['queued']} captures "
                             f"({figures['non_2xx']} not 2xx) of {len(holds)} holds: too few holds for the phase")
        return figures


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
    floor_port = free_port()
    floor = Child("floor", granian_argv("bench.floor:holds_app", floor_port, args.api_workers, args.api_threads),
                  env | {"BENCH_FLOOR_POOL": str(args.api_threads)})
    children.append(floor)
    floor.wait_for(lambda: healthy(floor_port), 60, "the floor app")
    meter = CpuMeter(children, database_url, args.database)
    phases = Phases(args, port, meter, database_url)
    operator = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    reads = wrk_script("holds-reads", "a random user's balance, with the user's key", [
        ("GET", f"/workspaces/{workspace_id(n)}/billing/balance", {"Authorization": f"Bearer {user_key(n)}"}, "")
        for n in range(1, w + 1)])
    creates = wrk_script("holds-creates", "a hold of 100 cents on a random workspace", [
        ("POST", f"/workspaces/{workspace_id(n)}/billing/holds", operator,
         '{"amountCents": 100, "expiresInSeconds": 3600}') for n in range(1, w + 1)])
    phases.run(reads, 1, "warmup")  # connections, prepared statements
    phases.run(reads, 1, "floor-warmup", port=floor_port, parts=FLOOR)
    # Rounds of the phases in turn, so a machine busy with something else for a while weighs on all alike; each
    # row's cost is the median round's.
    rounds, seconds = [], args.seconds
    for r in range(args.rounds):
        log(f"round {r + 1}/{args.rounds}: balance reads, hold creations, captures ({seconds} s each, wrk "
            f"-t{args.wrk_threads} -c{args.connections})")
        analyze(database_url)
        read = phases.run(reads, seconds, "read")
        since = phases.now()
        create = phases.run(creates, seconds, "create")
        if create["non_2xx"]:
            raise SetupError(f"{create['non_2xx']} hold creations not answered 201")
        with held_back(worker):
            accept = phases.captures(operator, "capture-accept", max(1, seconds // 2), since)
        posting = postings(meter, database_url, accept["queued"])
        since = phases.now()
        phases.run(creates, seconds, "create-more")
        capture = phases.captures(operator, "capture-applied", max(1, seconds // 2), since,
                                  lambda: applied(database_url))
        floor_read = phases.run(reads, seconds, "floor-read", port=floor_port, parts=FLOOR)
        floor_create = phases.run(creates, seconds, "floor-create", port=floor_port, parts=FLOOR)
        if floor_create["non_2xx"]:
            raise SetupError(f"{floor_create['non_2xx']} of the floor's hold creations not answered 201")
        log(f"  read {read}\n  create {create}\n  capture, worker stopped {accept}\n  its postings after {posting}\n"
            f"  capture, worker running, until applied {capture}\n  floor app: read {floor_read}\n"
            f"  floor app: create {floor_create}")
        rounds.append({"read": read, "create": create, "capture_accept": accept, "capture_posting": posting,
                       "capture": capture, "floor_read": floor_read, "floor_create": floor_create})
    with psycopg.connect(database_url, autocommit=True) as conn:
        deadline = time.monotonic() + 300
        while True:
            done = conn.execute("SELECT count(*) FILTER (WHERE status = 'succeeded'), count(*) FILTER (WHERE status = "
                                "'failed'), count(*) FROM operations WHERE kind = 'hold_capture'").fetchone()
            if sum(done[:2]) >= done[2] or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        unsettled = conn.execute("SELECT count(*) FROM holds WHERE capture_operation_id IS NOT NULL "
                                 "AND settled_at IS NULL").fetchone()[0]
    checked = audit(env)
    ok = done[0] == done[2] and done[1] == 0 and unsettled == 0 and checked["ok"]
    rows = []
    for name, phase_name in (("hold create (201)", "create"),
                             ("hold capture's accept (202, queued; what the agent waits for)", "capture_accept")):
        # per-request cost against a balance read's, same client, same round; the median round's
        median, cost = _median_round(rounds, _by_req_per_s(phase_name))
        read, figures = median["read"], median[phase_name]
        rows.append(row(f"{name} vs a balance read",
                        f"{figures['req_per_s']:.0f} req/s, p50 {figures['p50_ms']} ms; {_cpu_text(figures['cpu_ms'])}",
                        f"balance read {read['req_per_s']:.0f} req/s, p50 {read['p50_ms']} ms; "
                        f"{_cpu_text(read['cpu_ms'])} (same round, same client)",
                        round(cost, 3), f"≤ {TARGET}× the read's cost", cost <= TARGET and ok))
    for name, phase_name in (("hold create", "create"), ("hold capture, the accept", "capture_accept"),
                             ("hold capture, applied included (worker running)", "capture")):
        # the CPU the service spent per request (API, worker, its PostgreSQL backends), the median round's
        median, cpu = _median_round(rounds, _by_cpu(phase_name))
        judged = phase_name != "capture"
        target = f"≤ {TARGET}× the read's" if judged else "— (the posting is off the agent's path)"
        rows.append(row(f"{name}: the service's CPU per request vs a balance read's",
                        _cpu_text(median[phase_name]["cpu_ms"]),
                        f"balance read {_cpu_text(median['read']['cpu_ms'])}", round(cpu, 3), target,
                        cpu <= TARGET and ok if judged else None))
    median, _ = _median_round(rounds, _by_req_per_s("capture_accept"))
    read, posting = median["read"], median["capture_posting"]
    # What Python can do: the floor app (the same statements, nothing else) serving the same two requests
    median, cost = _median_round(rounds, _by_req_per_s("floor_create", "floor_read"))
    fr, fc = median["floor_read"], median["floor_create"]
    rows.append(row("floor app (the same statements, granian as the API): hold create vs a balance read",
                    f"{fc['req_per_s']:.0f} req/s, p50 {fc['p50_ms']} ms; {fc['cpu_ms']['service']} ms CPU (app "
                    f"{fc['cpu_ms']['floor']}, PostgreSQL {fc['cpu_ms']['postgres']})",
                    f"balance read {fr['req_per_s']:.0f} req/s, p50 {fr['p50_ms']} ms; {fr['cpu_ms']['service']} ms "
                    f"CPU (app {fr['cpu_ms']['floor']}, PostgreSQL {fr['cpu_ms']['postgres']})",
                    round(cost, 3), "— (what Python can do: the floor of the ratio)",
                    None))
    median, cpu = _median_round(rounds, _by_cpu("floor_create", "floor_read"))
    fr, fc = median["floor_read"], median["floor_create"]
    rows.append(row("floor app: hold create, its CPU per request vs a balance read's",
                    f"{fc['cpu_ms']['service']} ms CPU (app {fc['cpu_ms']['floor']}, PostgreSQL "
                    f"{fc['cpu_ms']['postgres']})",
                    f"balance read {fr['cpu_ms']['service']} ms CPU (app {fr['cpu_ms']['floor']}, PostgreSQL "
                    f"{fr['cpu_ms']['postgres']})", round(cpu, 3), "— (the floor of the CPU ratio)", None))
    rows.append(row("hold capture, its posting applied afterwards (worker resumed)", _cpu_text(posting),
                    "—", round(posting["service"] / read["cpu_ms"]["service"], 3),
                    "— (the posting's CPU per capture, as a multiple of the read's)", None))
    path = write_result("holds", {"rounds": rounds, "captures": done[2], "captures_succeeded": done[0],
                                  "captures_failed": done[1], "audit": checked, "summary": rows, "cpus": os.cpu_count(),
                                  "config": {k: v for k, v in vars(args).items() if k != "admin_url"}})
    log(f"captures {done[2]}: succeeded {done[0]}, failed {done[1]}; holds captured but still reserving {unsettled}; "
        f"audit {'ok' if checked['ok'] else 'FAILED'}; written to {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
