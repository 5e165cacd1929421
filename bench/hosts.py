"""bench/hosts: credits applied/s with one and with two worker hosts, and how long the other host takes to
take over from one cut off mid-credit.

The service runs across network namespaces of this machine, as tests/hosts does (tests/hosts/network.py):
PostgreSQL and Redis on `db`, the API (granian, --api-workers x --api-threads) and beat on `api`, a Celery
worker (--concurrency processes, every queue) on each of `w1` and `w2`; this process is the client, over a
bridge. Needs root (ip netns, veth, a bridge). --workspaces workspaces are seeded with SQL.

1. One worker host (w1), after 500 credits to warm up: --credits credits posted through the API by --clients
   keep-alive clients, twice. Streamed: applied as they come; applied/s from the first accepted to the last
   applied (the operations' created_at and updated_at). Drain: the worker's ledger consumer paused (Celery's
   cancel_consumer) until the API accepted them all, then resumed; applied/s from then to the last applied,
   the worker hosts' own pace. Each phase also records the CPU per credit of the API and of each worker.
2. Two worker hosts: w2 started, the same again.
3. Failover, --cuts times: both workers restarted with BILLING_DB_LOCK_TIMEOUT_MS=120000 (a held account
   keeps a worker inside its transaction), a trickle of credits through the API, one account held while it
   is credited, the worker host whose transaction waits on it cut off (its link down, from inside its
   namespace), the account let go. Reported: seconds from the cut until the other host applied that credit,
   and until every credit accepted by then was applied; then the link comes back and the host must apply
   again.

Checks every credit succeeded with exactly one ledger entry and ends with `billing audit`. Writes
bench/results/hosts.json; exit 1 when a check failed, 2 when it could not run. See bench/README.md.
"""
import argparse
import itertools
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import psycopg
from sqlalchemy import text

from bench.harness import (LOGS, SEED, Load, SetupError, audit, grant_seeded_credits, log, row, workspace_id,
                           write_result)
from domain.store.uow import make_engine
from tests.hosts.cluster import API_PORT, Cluster
from tests.hosts.failover import WAIT_ON_LOCKS, cut_mid_credit, seconds_until_applied
from tests.postgres_server import build_template, remove_template
from tests.processes import Load as Trickle, wait_for_operations, wait_until

TRICKLE_PAUSE = 0.05  # seconds between two credits of the failover phase's trickle


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--credits", type=int, default=3000, help="credits per throughput phase")
    p.add_argument("--workspaces", type=int, default=1000)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--concurrency", type=int, default=2, help="worker processes per worker host")
    p.add_argument("--api-workers", type=int, default=2)
    p.add_argument("--api-threads", type=int, default=4)
    p.add_argument("--cuts", type=int, default=2, help="failovers to measure")
    p.add_argument("--drain-timeout", type=int, default=600)
    return p.parse_args()


def main() -> int:
    args, logs = parse_args(), LOGS / "hosts"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    template = build_template(logs)
    cluster = None
    try:
        cluster = Cluster(template, logs)
        return run(args, cluster)
    except SetupError as exc:
        log(f"set-up failed: {exc}")
        return 2
    finally:
        if cluster is not None:
            cluster.stop()
        remove_template(template)
        log(f"process logs: {logs}")


def run(args, cluster) -> int:
    log("starting the hosts: db (PostgreSQL, Redis), api (API, beat), w1 (worker)")
    try:
        cluster.start(api_workers=args.api_workers, api_threads=args.api_threads, concurrency=args.concurrency,
                      workers=["w1"])
    except Exception as exc:  # a namespace command or a process that would not start: said in one line
        raise SetupError(f"{type(exc).__name__}: {exc}") from exc
    hosts = {h.name: h.address for h in cluster.network.hosts.values()}
    log(f"subnet {cluster.network.subnet}: {hosts}")
    seed(cluster.database_url, args.workspaces)
    throughput(argparse.Namespace(**vars(args) | {"credits": min(args.credits, 500)}), cluster, "warm-up", ["w1"],
               drain=False)  # connections, prepared statements and caches: the first phase would pay for them
    one = {"streamed": throughput(args, cluster, "one-host", ["w1"], drain=False),
           "drain": throughput(args, cluster, "one-host-drain", ["w1"], drain=True)}
    cluster.start_worker("w2", args.concurrency)
    two = {"streamed": throughput(args, cluster, "two-hosts", ["w1", "w2"], drain=False),
           "drain": throughput(args, cluster, "two-hosts-drain", ["w1", "w2"], drain=True)}
    failovers = [failover(args, cluster, n) for n in range(args.cuts)]
    problems = unapplied(cluster.database_url) + [f"failover {n + 1}: {f['error']}" for n, f in enumerate(failovers)
                                                   if "error" in f]
    checked = audit(cluster.env)
    result = {"one_host": one, "two_hosts": two, "failovers": failovers, "problems": problems, "audit": checked,
              "hosts": hosts, "settings": vars(args), "summary": summary(one, two, failovers)}
    out = write_result("hosts", result)
    for line in (*(f"credits applied/s, {mode}: one worker host {one[mode]['applied_per_s']:.0f}, "
                   f"two {two[mode]['applied_per_s']:.0f}" for mode in ("streamed", "drain")),
                 *(f"failover {n + 1}: {f['host']} cut off mid-credit; taken over after {f['taken_over_s']:.1f} s, "
                   f"everything accepted by then applied after {f['caught_up_s']:.1f} s, back after "
                   f"{f['back_s']:.1f} s" for n, f in enumerate(failovers) if "error" not in f),
                 f"written: {out}"):
        log(line)
    for problem in problems:
        log(f"PROBLEM: {problem}")
    return 0 if checked["ok"] and not problems else 1


def seed(url: str, workspaces: int) -> None:
    with psycopg.connect(url) as conn, conn.transaction():
        conn.execute("SET CONSTRAINTS ALL DEFERRED")
        for statement in filter(str.strip, SEED.split(";\n")):
            conn.execute(statement, {"n": workspaces, "cents": 1000})
    grant_seeded_credits(url)  # the seeded credits' grants, as the service would have opened them


class Credits:
    """next_request for harness.Load: `count` credits of 100 cents over the workspaces, tagged with the phase."""

    def __init__(self, phase: str, count: int, workspaces: int, token: str) -> None:
        self.phase, self.count, self.workspaces = phase, count, workspaces
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.numbers, self.lock = itertools.count(), threading.Lock()

    def __call__(self):
        with self.lock:
            n = next(self.numbers)
        if n >= self.count:
            return None
        body = json.dumps({"amountCents": 100, "description": self.phase})
        return (f"/workspaces/{workspace_id(n % self.workspaces + 1)}/billing/credits", body,
                self.headers | {"Idempotency-Key": f"{self.phase}-{n}"})


PHASE = """
SELECT count(*) FILTER (WHERE status = 'succeeded'), count(*) FILTER (WHERE status NOT IN ('succeeded', 'failed')),
       extract(epoch FROM max(updated_at) - coalesce(%(since)s, min(created_at)))
FROM operations WHERE kind = 'credit' AND payload->>'description' = %(phase)s
"""


def throughput(args, cluster, phase: str, workers: list[str], drain: bool) -> dict:
    """Post the phase's credits. Streamed: applied as they come, applied/s from the first accepted to the last
    applied. Drain: the workers' ledger consumers paused while the API accepts them all, then resumed at
    once; applied/s from the resumption to the last applied: the worker hosts' own pace, not the API's."""
    log(f"{phase}: {args.credits} credits from {args.clients} clients" + (", applied once all are in" if drain else ""))
    if drain:
        control(cluster, "cancel_consumer", workers)
    cpu_before = cpu_seconds(cluster)
    credits = Credits(phase, args.credits, args.workspaces, cluster.env["BILLING_OPERATOR_TOKEN"])
    api = cluster.host("api").address
    load = Load(API_PORT, args.clients, credits, time.monotonic() + args.drain_timeout, host=api)
    load.run()
    accepted = load.statuses.get(202, 0)
    deadline = time.monotonic() + args.drain_timeout
    with psycopg.connect(cluster.database_url, autocommit=True) as conn:
        since = None
        if drain:
            since = conn.execute("SELECT clock_timestamp()").fetchone()[0]
            control(cluster, "add_consumer", workers)
        while True:
            succeeded, unfinished, span = conn.execute(PHASE, {"phase": phase, "since": since}).fetchone()
            if not unfinished or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    cpu = {name: round((seconds - cpu_before.get(name, 0.0)) * 1000 / max(succeeded, 1), 3)
           for name, seconds in cpu_seconds(cluster).items()}
    result = {"credits": args.credits, "accepted": accepted, "answers": {str(k): v for k, v in load.statuses.items()},
              "succeeded": succeeded, "unfinished": unfinished, "seconds": round(float(span or 0), 3),
              "accepted_per_s": round(accepted / (load.finished - load.started), 1),
              "applied_per_s": round(succeeded / float(span), 1) if span else 0.0, "cpu_ms_per_credit": cpu,
              "load_average": os.getloadavg()[0]}
    log(f"{phase}: accepted {accepted} ({result['accepted_per_s']:.0f}/s), applied {succeeded} "
        f"({result['applied_per_s']:.0f}/s), unfinished {unfinished}; CPU ms per credit {cpu}")
    return result


def cpu_seconds(cluster) -> dict[str, float]:
    """User + system CPU so far of the API's and each worker's processes (each group, pool processes included)."""
    ticks = os.sysconf("SC_CLK_TCK")

    def used(pid: int) -> float:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / ticks
    return {name: sum(used(pid) for pid in process.group()) for name, process in cluster.processes.items()
            if name == "api" or name in cluster.worker_names}


def control(cluster, command: str, workers: list[str]) -> None:
    """cancel_consumer or add_consumer of the ledger queue on these workers, each one confirmed."""
    nodes = [cluster.node(w) for w in workers]
    replies = getattr(cluster.celery.control, command)("ledger", destination=nodes, reply=True, timeout=5)
    if len(replies) != len(nodes):
        raise SetupError(f"{command}: {len(replies)} of {len(nodes)} workers answered ({replies})")


def failover(args, cluster, n: int) -> dict:
    for name in cluster.worker_names:  # workers that wait on a held account (see the module's docstring)
        cluster.stop_worker(name)
        cluster.start_worker(name, args.concurrency, env=WAIT_ON_LOCKS)
    engine = make_engine(cluster.database_url)
    # the held account is one of the last workspaces, which the trickle (the first half) never credits
    last = args.workspaces - n
    held = {"id": workspace_id(last), "defaultBillingAccountId": _account_of(engine, last)}

    def credit(i: int):
        path = f"/workspaces/{workspace_id(i % (args.workspaces // 2) + 1)}/billing/credits"
        return cluster.api.operator("POST", path, json={"amountCents": 100, "description": f"failover-{n}"},
                                    headers={"Idempotency-Key": f"failover-{n}-{i}"})
    try:
        with Trickle(credit, threads=1, pause=TRICKLE_PAUSE) as trickle:
            time.sleep(2)
            cut = cut_mid_credit(cluster, engine, held)
            log(f"failover {n + 1}: {cut.host.name} cut off with {cut.operation_id} in its transaction")
            taken_over = seconds_until_applied(engine, cut, timeout=args.drain_timeout)
            accepted = [a.result.json["id"] for a in trickle.answers() if a.result and a.result.status_code == 202]
            wait_for_operations(engine, accepted, timeout=args.drain_timeout)
            caught_up = time.monotonic() - cut.at
            returned = cluster.processes[cut.host.name]
            mark, link_back = len(returned.output()), time.monotonic()
            cut.host.restore()
            wait_until(lambda: "succeeded in" in returned.output()[mark:], 120, f"{cut.host.name} to apply again")
            back = time.monotonic() - link_back
        wait_until(lambda: cluster.idle(cut.host.name), 300, f"{cut.host.name} to finish what it held")
    except AssertionError as exc:  # a wait that timed out: the takeover did not happen
        return {"host": None, "error": str(exc)}
    finally:
        engine.dispose()
    log(f"failover {n + 1}: taken over after {taken_over:.1f} s; {len(accepted)} accepted by then applied after "
        f"{caught_up:.1f} s; {cut.host.name} applied again {back:.1f} s after its link came back")
    return {"host": cut.host.name, "operation": cut.operation_id, "taken_over_s": round(taken_over, 2),
            "caught_up_s": round(caught_up, 2), "accepted_during": len(accepted), "back_s": round(back, 2)}


def _account_of(engine, n: int) -> str:
    with engine.connect() as conn:
        return conn.execute(text("SELECT default_billing_account_id FROM workspaces WHERE id = :id"),
                            {"id": workspace_id(n)}).scalar()


CHECKS = """
SELECT o.id, o.status, count(e.id) FROM operations o
LEFT JOIN ledger_entries e ON e.idempotency_key = 'op:' || o.id
WHERE o.kind = 'credit' GROUP BY o.id, o.status HAVING o.status <> 'succeeded' OR count(e.id) <> 1
LIMIT 50
"""


def unapplied(url: str) -> list[str]:
    """Credits not succeeded, or not with exactly one entry."""
    with psycopg.connect(url) as conn:
        return [f"credit {i}: {status}, {entries} entries" for i, status, entries in conn.execute(CHECKS)]


def summary(one: dict, two: dict, failovers: list[dict]) -> list[dict]:
    rows = []
    for mode, words in (("streamed", "as posted"), ("drain", "from a full queue")):
        alone, both = one[mode]["applied_per_s"], two[mode]["applied_per_s"]
        # no ratio column: bench/run charts ratios against targets, and the number of hosts has no target
        times = f" ({both / alone:.2f}× one host)" if alone else ""
        rows += [row(f"credits {words}, one worker host", f"{alone:.0f} applied/s", "—", None, "—", None),
                 row(f"credits {words}, two worker hosts", f"{both:.0f} applied/s{times}", "—", None, "—", None)]
    for n, f in enumerate(failovers):
        took = f.get("taken_over_s")
        rows.append(row(f"worker host cut off mid-credit ({n + 1})",
                        f"taken over after {took:.0f} s" if took is not None else f["error"][:80], "—", None,
                        "≤ 60 s", took is not None and took <= 60))
    return rows


if __name__ == "__main__":
    sys.exit(main())
