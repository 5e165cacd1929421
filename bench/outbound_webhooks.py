"""bench/outbound_webhooks: what emitting webhook events costs the posting path, and deliveries per second.

One service as deployed (the API as `billing api` runs it, a worker of every queue but webhooks, a private
redis-server) on a fresh database of --workspaces workspaces. Half of them get an endpoint subscribed to every
event type (transaction.created is what a credit emits) on a receiver in this process (loopback,
BILLING_WEBHOOKS_ALLOW_PRIVATE=1). Rounds of --credits credits through the API, closed loop from --clients
clients, alternate between the workspaces without an endpoint and those with one; a round's credits applied/s
is its credits over the span from the first accepted to the last applied (the operations' own timestamps),
and each mode keeps its best round. Deliveries wait meanwhile (no webhooks worker yet): the posting path pays
for the events and their delivery rows, not for the HTTP calls. Then a webhooks worker starts and delivers
everything pending to the receiver: deliveries/s from its start to the last success. Checks: every credit
applied, one event and one delivery per credit of a subscribed workspace, every delivery succeeded, every
event received with a valid signature, `billing audit`. See bench/README.md.
"""
import argparse
import json
import os
import sys
import threading
import time

import psycopg

from bench.harness import (Child, Load, SetupError, audit, fresh_database, log, row, run_with_children, seed_api_keys,
                           service_env, start_api, start_redis, user_key, workspace_id, write_result)
from tests.standins.webhook_receiver import WebhookReceiver

TARGET = 0.9  # issue 17: emitting events costs the posting path at most 10 % of credits applied/s
EVENTS = ["balance.low", "balance.depleted", "transaction.created", "checkout.completed", "checkout.failed",
          "operation.failed", "grant.expiring", "spend_limit.alert"]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--database", default="billing_bench_outbound_webhooks")
    p.add_argument("--workspaces", type=int, default=400, help="half of them with an endpoint")
    p.add_argument("--credits", type=int, default=4000, help="credits per round")
    p.add_argument("--rounds", type=int, default=2, help="rounds per mode (without, with an endpoint), alternating")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--concurrency", type=int, default=2, help="processes of each worker")
    p.add_argument("--api-workers", type=int, default=2)
    p.add_argument("--api-threads", type=int, default=4)
    return p.parse_args()


def main() -> int:
    return run_with_children(run, parse_args())


def subscribe(port: int, workspaces: range, url: str) -> dict[str, str]:
    """An endpoint per workspace, through the API with its owner's key: workspace id -> its secret."""
    def request(n: int):
        return ("POST", f"/workspaces/{workspace_id(n)}/webhook-endpoints", json.dumps({"url": url, "events": EVENTS}),
                {"Authorization": f"Bearer {user_key(n)}", "Content-Type": "application/json"})
    jobs, lock = iter(workspaces), threading.Lock()

    def next_request():
        with lock:
            n = next(jobs, None)
        return None if n is None else request(n)
    load = Load(port, 4, next_request, time.monotonic() + 300)
    load.run()
    if load.statuses.get(201) != len(workspaces):
        raise SetupError(f"endpoints not created: {dict(load.statuses)}")
    return {body["id"]: body["secret"] for body in load.bodies}


def credit_round(port: int, token: str, workspaces: range, credits: int, clients: int, database_url: str) -> dict:
    """`credits` credits spread over the workspaces; applied/s from the first accepted to the last applied."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    requests = iter([(f"/workspaces/{workspace_id(workspaces[i % len(workspaces)])}/billing/credits",
                      '{"amountCents": 7}', headers) for i in range(credits)])
    lock = threading.Lock()

    def next_request():
        with lock:
            return next(requests, None)
    load = Load(port, clients, next_request, time.monotonic() + 600)
    load.run()
    ids = [body["id"] for body in load.bodies if body.get("id", "").startswith("op_")]
    if len(ids) != credits:
        raise SetupError(f"{len(ids)} of {credits} credits accepted: {dict(load.statuses)}")
    query = ("SELECT count(*) FILTER (WHERE status = 'succeeded'), "
             "EXTRACT(EPOCH FROM max(updated_at) - min(created_at)) FROM operations WHERE id = ANY(%s)")
    with psycopg.connect(database_url, autocommit=True) as conn:
        deadline = time.monotonic() + 600
        while (found := conn.execute(query, (ids,)).fetchone())[0] < credits and time.monotonic() < deadline:
            time.sleep(0.2)
    applied, span = found
    return {"credits": credits, "applied": applied, "seconds": round(float(span), 3),
            "applied_per_s": round(applied / float(span), 1)}


def deliver_all(env: dict, children: list[Child], database_url: str, expected: int, concurrency: int) -> dict:
    """A webhooks worker delivers what is pending; deliveries/s from the first success to the last (its start-up
    left out), and from its start."""
    from worker.cli import worker_argv

    started = time.time()
    worker = Child("webhooks-worker", worker_argv("webhooks", concurrency, name="bench-webhooks@%h"),
                   env | {"WORKER_METRICS_PORT": "0"})
    children.append(worker)
    query = ("SELECT count(*) FILTER (WHERE status = 'succeeded'), count(*) FILTER (WHERE status = 'failed'), "
             "EXTRACT(EPOCH FROM min(updated_at) FILTER (WHERE status = 'succeeded')), "
             "EXTRACT(EPOCH FROM max(updated_at)) FROM webhook_deliveries")
    with psycopg.connect(database_url, autocommit=True) as conn:
        deadline = time.monotonic() + 900
        while sum((found := conn.execute(query).fetchone())[:2]) < expected and time.monotonic() < deadline:
            time.sleep(0.5)
    succeeded, failed, first, last = found
    span, since_start = (float(last) - float(first), float(last) - started) if last else (0.0, 0.0)
    return {"deliveries": expected, "succeeded": succeeded, "failed": failed, "seconds": round(span, 2),
            "per_s": round(succeeded / span, 1) if span > 0 else 0.0, "concurrency": concurrency,
            "seconds_from_worker_start": round(since_start, 2)}


def run(args, children: list[Child]) -> int:
    w = args.workspaces
    database_url = fresh_database(args.admin_url, args.database, w, 10**6)
    seed_api_keys(database_url, w)
    redis_url, _ = start_redis(children)
    env = service_env(database_url, redis_url, BILLING_API_RATE_LIMIT="0", BILLING_WEBHOOKS_ALLOW_PRIVATE="1")
    from worker.cli import worker_argv
    from worker.processes import MONEY_QUEUES

    worker = Child("worker", worker_argv(MONEY_QUEUES, args.concurrency, name="bench-ledger@%h"), env)
    children.append(worker)
    port = start_api(children, env, args.api_workers, args.api_threads)
    worker.wait_for(lambda: " ready." in worker.text(), 60, "the worker")
    token = env["BILLING_OPERATOR_TOKEN"]
    plain, subscribed = range(1, w // 2 + 1), range(w // 2 + 1, w + 1)
    with WebhookReceiver() as receiver:
        secrets_by_endpoint = subscribe(port, subscribed, receiver.url)
        credit_round(port, token, plain, args.credits // 4, args.clients, database_url)  # warm-up
        rounds = {"without": [], "with": []}
        for i in range(args.rounds):
            for mode, workspaces in (("without", plain), ("with", subscribed)):
                result = credit_round(port, token, workspaces, args.credits, args.clients, database_url)
                rounds[mode].append(result)
                log(f"round {i + 1}, {mode} an endpoint: {result}")
        with psycopg.connect(database_url, autocommit=True) as conn:
            events, deliveries = conn.execute("SELECT (SELECT count(*) FROM webhook_events), "
                                              "(SELECT count(*) FROM webhook_deliveries)").fetchone()
        expected = args.credits * args.rounds
        log(f"events {events}, deliveries {deliveries} (expected {expected} each); delivering")
        delivered = deliver_all(env, children, database_url, deliveries, args.concurrency * 2)
        log(f"delivered: {delivered}")
        received = receiver.received()
        secret_of = {}
        with psycopg.connect(database_url, autocommit=True) as conn:
            for endpoint_id, ws in conn.execute("SELECT id, workspace_id FROM webhook_endpoints"):
                secret_of[ws] = secrets_by_endpoint[endpoint_id]
        unique = {r.webhook_id for r in received}
        bad = sum(not r.verifies(secret_of[r.event["workspaceId"]]) for r in received)
    checked = audit(env)
    best = {mode: max(r["applied_per_s"] for r in results) for mode, results in rounds.items()}
    ratio = best["with"] / best["without"]
    ok = (events == deliveries == expected and delivered["succeeded"] == expected and len(unique) == expected
          and bad == 0 and all(r["applied"] == r["credits"] for results in rounds.values() for r in results)
          and checked["ok"])
    rows = [row("outbound webhooks: credits applied/s with an endpoint subscribed",
                f"{best['with']:.0f} credits applied/s, each emitting transaction.created to its endpoint",
                f"{best['without']:.0f} credits applied/s without an endpoint (same run, alternating rounds)",
                ratio, f"≥ {TARGET}× (events cost ≤ 10 %)", ratio >= TARGET and ok),
            row("outbound webhooks: deliveries/s to a local receiver",
                f"{delivered['per_s']:.0f} deliveries/s ({delivered['concurrency']} worker processes, signed, "
                f"each its own connection)", "—", None, "—", ok)]
    path = write_result("outbound_webhooks", {
        "rounds": rounds, "best": best, "ratio": round(ratio, 3), "events": events, "deliveries": deliveries,
        "delivered": delivered, "received": len(received), "received_unique": len(unique), "bad_signatures": bad,
        "audit": checked, "summary": rows, "cpus": os.cpu_count(),
        "config": {k: v for k, v in vars(args).items() if k != "admin_url"}})
    log(f"with/without {ratio:.3f}; deliveries/s {delivered['per_s']}; audit {'ok' if checked['ok'] else 'FAILED'}; "
        f"written to {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
