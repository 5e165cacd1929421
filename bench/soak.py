"""bench/soak: a mixed load on the whole service for --minutes while its processes are killed on a schedule.

Creates a fresh database, starts a private redis-server (fixed port, so a restart keeps the address), a
loopback Stripe stand-in in this process, the real API, worker and beat, and seeds users and workspaces
through the API. Closed-loop clients then mix reads, operator credits (some resent with their
Idempotency-Key), usage batches (some eventIds repeated), Stripe checkouts paid at the stand-in and
confirmed by signed webhooks (some delivered twice) and rate-limit checks, while every --fault-every
seconds one fault is injected in turn: a worker SIGKILLed and restarted, Redis stopped for
--outage-seconds, beat SIGKILLed and restarted. Then it drains, stops the service, runs `billing audit`,
and counts, against its own record of what was accepted, what was applied, lost and applied twice.
See bench/README.md.
"""
import argparse
import http.client
import json
import os
import random
import secrets
import shutil
import socket
import sys
import threading
import time
import traceback
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import psycopg

from bench.harness import (LOGS, Child, SetupError, billing, fresh_database, log, percentile,
                           port_is_free, sigkill, start_api, start_beat, start_redis_on, start_worker, write_result)
from tests.standins.stripe_api import StripeStandIn, signed_event

FAULTS = ("worker_kill", "redis_stop", "beat_kill")
MIX = {"read": 45, "credit": 20, "usage": 12, "checkout": 5, "ratelimit": 18}  # weights of a client's next action
RESEND_SHARE = 0.1  # credits, usage batches and checkouts sent again with the same Idempotency-Key
REPEAT_EVENT_SHARE = 0.1  # usage events whose eventId was accepted before (a client's retry of the event)
DUPLICATE_WEBHOOK_SHARE = 0.25  # webhooks delivered twice
SECOND_EVENT_SHARE = 0.1  # paid checkouts also confirmed by checkout.session.async_payment_succeeded
USAGE_BATCH = 20
IDLE_RECONNECT_SECONDS = 1.0  # reconnect after this long idle (a server may close idle keep-alive connections)
RETRY_FOR_SECONDS = 120  # a money-moving request is retried (same key) this long on a 5xx or a broken connection
OUTAGE_GRACE_SECONDS = 10  # after Redis is back, a 503 still counts as the outage's
WEBHOOK_SECRET = f"whsec_soak_{secrets.token_hex(8)}"
JSON = {"Content-Type": "application/json"}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--fault-every", type=float, default=60, help="seconds between faults (0: none)")
    p.add_argument("--outage-seconds", type=float, default=20, help="how long Redis stays down")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--workspaces", type=int, default=40)
    p.add_argument("--concurrency", type=int, default=2, help="worker processes")
    p.add_argument("--api-workers", type=int, default=2)
    p.add_argument("--api-threads", type=int, default=4)
    p.add_argument("--drain-timeout", type=float, default=600)
    p.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--database", default="billing_soak")
    p.add_argument("--redis-port", type=int, default=6393)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--output", default="soak", help="name of the result file in bench/results/")
    return p.parse_args()


@dataclass
class Workspace:
    id: str
    account_id: str
    auth: dict


class Stats:
    """Per endpoint: latencies, answers by status, and every 5xx or broken connection with its time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.statuses: dict[str, Counter] = defaultdict(Counter)
        self.failures: list[tuple[float, float, str, int | str]] = []

    def record(self, label: str, status: int | str, start: float, end: float) -> None:
        with self.lock:
            self.statuses[label][status] += 1
            if isinstance(status, int):
                self.latencies[label].append(end - start)
            if not isinstance(status, int) or status >= 500:
                self.failures.append((start, end, label, status))

    def total(self) -> int:
        with self.lock:
            return sum(sum(c.values()) for c in self.statuses.values())


@dataclass
class Accepted:
    """What the service acknowledged, as the clients saw it: the truth the database is checked against."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    credits: dict = field(default_factory=dict)  # Idempotency-Key -> (workspace, amount, operation id)
    usage_batches: dict = field(default_factory=dict)  # Idempotency-Key -> (workspace, operation id)
    usage_events: dict = field(default_factory=dict)  # (workspace, eventId) -> amount of the first accepted
    recent_events: dict = field(default_factory=lambda: defaultdict(list))  # workspace -> events to repeat
    paid: dict = field(default_factory=dict)  # checkout id -> (workspace, amount, Stripe session id)
    webhooks_acknowledged: int = 0
    violations: list = field(default_factory=list)  # replays that answered otherwise than the first time
    unacknowledged: list = field(default_factory=list)  # money-moving requests never answered

    def violation(self, text: str) -> None:
        with self.lock:
            self.violations.append(text)


class Client:
    """One keep-alive connection, reopened when idle long enough that the server may have closed it."""

    def __init__(self, port: int, stats: Stats) -> None:
        self.port, self.stats = port, stats
        self.conn: http.client.HTTPConnection | None = None
        self.last_used = 0.0

    def _connection(self) -> http.client.HTTPConnection:
        if self.conn is not None and time.monotonic() - self.last_used > IDLE_RECONNECT_SECONDS:
            self.close()
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            self.conn.connect()
            self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self.conn

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def request(self, label: str, method: str, path: str, body: str | bytes | None = None,
                headers: dict | None = None) -> tuple[int | str, dict | None]:
        start = time.monotonic()
        try:
            conn = self._connection()
            conn.request(method, path, body, headers or {})
            resp = conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            self.stats.record(label, type(exc).__name__, start, time.monotonic())
            return type(exc).__name__, None
        finally:
            self.last_used = time.monotonic()
        self.stats.record(label, resp.status, start, self.last_used)
        return resp.status, json.loads(raw) if raw and "json" in (resp.getheader("Content-Type") or "") else None

    def until_answered(self, label: str, method: str, path: str, body, headers: dict) -> tuple[int | str, dict | None]:
        """Send until the answer is final (no 5xx, no broken connection), as a client holding an
        Idempotency-Key may; the last answer after RETRY_FOR_SECONDS otherwise."""
        deadline, pause = time.monotonic() + RETRY_FOR_SECONDS, 0.25
        while True:
            status, data = self.request(label, method, path, body, headers)
            if (isinstance(status, int) and status < 500) or time.monotonic() > deadline:
                return status, data
            time.sleep(pause)
            pause = min(pause * 2, 5.0)


class Workload:
    """The clients' actions; each records what the service acknowledged in `accepted`."""

    def __init__(self, workspaces: list[Workspace], operator: dict, stripe: StripeStandIn, accepted: Accepted) -> None:
        self.workspaces, self.operator, self.stripe, self.accepted = workspaces, operator, stripe, accepted
        self.actions = list(MIX)
        self.weights = [MIX[a] for a in self.actions]

    def step(self, c: Client, rng: random.Random) -> None:
        action = rng.choices(self.actions, self.weights)[0]
        getattr(self, action)(c, rng, rng.choice(self.workspaces))

    def read(self, c: Client, rng: random.Random, ws: Workspace) -> None:
        what = rng.choice(("balance", "transactions?limit=20", "summary"))
        c.request(f"GET {what.split('?')[0]}", "GET", f"/workspaces/{ws.id}/billing/{what}", headers=ws.auth)

    def ratelimit(self, c: Client, rng: random.Random, ws: Workspace) -> None:
        c.request("POST rate-limits/check", "POST", f"/workspaces/{ws.id}/rate-limits/check", '{"cost": 1}',
                  self.operator)

    def _keyed(self, c: Client, rng: random.Random, label: str, path: str, body: str, auth: dict,
               expect: int) -> dict | None:
        """POST with a fresh Idempotency-Key until answered; sometimes again with the same key, which must
        replay the first answer. The first answer's body when it was `expect`."""
        headers = auth | {"Idempotency-Key": f"soak-{uuid.uuid4().hex}"}
        status, data = c.until_answered(label, "POST", path, body, headers)
        if not isinstance(status, int) or status >= 500:
            with self.accepted.lock:
                self.accepted.unacknowledged.append(f"{label} {headers['Idempotency-Key']}: last answer {status}")
            return None
        if status != expect:
            return None  # refused (a 4xx): nothing accepted
        if rng.random() < RESEND_SHARE:
            again, replay = c.until_answered(f"{label} (resend)", "POST", path, body, headers)
            if again != status or (replay or {}).get("id") != data["id"]:
                self.accepted.violation(f"{label} resent with key {headers['Idempotency-Key']}: first {status} "
                                        f"{data['id']}, then {again} {(replay or {}).get('id')}")
        return data | {"_key": headers["Idempotency-Key"]}

    def credit(self, c: Client, rng: random.Random, ws: Workspace) -> None:
        amount = rng.randint(1, 5000)
        body = json.dumps({"amountCents": amount, "description": "soak credit"})
        op = self._keyed(c, rng, "POST credits", f"/workspaces/{ws.id}/billing/credits", body, self.operator, 202)
        if op is not None:
            with self.accepted.lock:
                self.accepted.credits[op["_key"]] = (ws.id, amount, op["id"])

    def usage(self, c: Client, rng: random.Random, ws: Workspace) -> None:
        with self.accepted.lock:
            seen = list(self.accepted.recent_events[ws.id])
        events = []
        for _ in range(USAGE_BATCH):
            if seen and rng.random() < REPEAT_EVENT_SHARE:
                events.append(rng.choice(seen))
            else:
                events.append({"eventId": f"ev-{uuid.uuid4().hex}", "metric": "tokens",
                               "quantity": rng.randint(1, 1000), "amountCents": rng.randint(1, 3)})
        if rng.random() < 0.05:
            events.append(dict(events[0]))  # the same event twice in one batch
        body = json.dumps({"events": events})
        op = self._keyed(c, rng, "POST usage", f"/workspaces/{ws.id}/billing/usage", body, self.operator, 202)
        if op is None:
            return
        with self.accepted.lock:
            self.accepted.usage_batches[op["_key"]] = (ws.id, op["id"])
            recent = self.accepted.recent_events[ws.id]
            for e in events:
                if (ws.id, e["eventId"]) not in self.accepted.usage_events:
                    self.accepted.usage_events[(ws.id, e["eventId"])] = e["amountCents"]
                    recent.append(e)
            del recent[:-200]

    def checkout(self, c: Client, rng: random.Random, ws: Workspace) -> None:
        amount = rng.randint(500, 20_000)
        body = json.dumps({"amountCents": amount, "successUrl": "https://soak.example/ok",
                           "cancelUrl": "https://soak.example/cancel"})
        checkout = self._keyed(c, rng, "POST checkout", f"/workspaces/{ws.id}/billing/checkout", body,
                               ws.auth | JSON, 201)
        if checkout is None:
            return
        session = self.stripe.pay(checkout["stripeSessionId"])
        with self.accepted.lock:  # paid at Stripe: from now on it must be credited, by webhook or reconcile
            self.accepted.paid[checkout["id"]] = (ws.id, amount, session["id"])
        payload, signature = signed_event(WEBHOOK_SECRET, "checkout.session.completed", session)
        self._deliver(c, "POST webhook", payload, signature)
        if rng.random() < DUPLICATE_WEBHOOK_SHARE:
            self._deliver(c, "POST webhook (duplicate)", payload, signature)
        if rng.random() < SECOND_EVENT_SHARE:
            self._deliver(c, "POST webhook (second event)",
                          *signed_event(WEBHOOK_SECRET, "checkout.session.async_payment_succeeded", session))

    def _deliver(self, c: Client, label: str, payload: bytes, signature: str) -> None:
        """As Stripe delivers: retried until acknowledged."""
        status, _ = c.until_answered(label, "POST", "/webhooks/stripe", payload,
                                     JSON | {"Stripe-Signature": signature})
        with self.accepted.lock:
            if status == 200:
                self.accepted.webhooks_acknowledged += 1
            elif not isinstance(status, int) or status >= 500:
                self.accepted.unacknowledged.append(f"{label}: last answer {status}")
            else:
                self.accepted.violations.append(f"{label}: a correctly signed event answered {status}")


class Service:
    """The service's processes; the faults kill and restart them."""

    def __init__(self, args, env: dict, children: list[Child]) -> None:
        self.args, self.env, self.children = args, env, children
        self.state_dir = LOGS / "soak-beat-state"  # beat's schedule file, kept across its restarts as in production
        shutil.rmtree(self.state_dir, ignore_errors=True)
        self.state_dir.mkdir(parents=True)
        self.incarnations: Counter = Counter()
        self.redis = self.worker = self.beat = None

    def _name(self, what: str) -> str:
        self.incarnations[what] += 1
        return f"{what}-{self.incarnations[what]}"

    def start_redis(self) -> None:
        self.redis = start_redis_on(self.children, self.args.redis_port, self._name("redis"))

    def start_worker(self) -> None:
        name = self._name("worker")
        self.worker = start_worker(self.children, self.env, name, self.args.concurrency,
                                   f"soak-{name}-{secrets.token_hex(3)}@%h")

    def start_beat(self) -> None:
        self.beat = start_beat(self.children, self.env, self._name("beat"), str(self.state_dir))

    def inject(self, kind: str, outage_seconds: float) -> None:
        if kind == "worker_kill":
            sigkill(self.worker)
            self.start_worker()
        elif kind == "redis_stop":
            sigkill(self.redis)
            time.sleep(outage_seconds)
            self.start_redis()
        else:
            sigkill(self.beat)
            self.start_beat()


class Faults(threading.Thread):
    """One fault every `every` seconds, the first half a period in, in the order of FAULTS."""

    def __init__(self, service: Service, start: float, every: float, until: float, outage_seconds: float) -> None:
        super().__init__(daemon=True)
        self.service, self.start_at, self.every, self.until = service, start, every, until
        self.outage_seconds = outage_seconds
        self.windows: list[dict] = []  # kind, start, end (monotonic), error
        self.stopping = threading.Event()

    def run(self) -> None:
        k = 0
        while self.every > 0:
            at = self.start_at + self.every * (k + 0.5)
            if at >= self.until or self.stopping.wait(max(0.0, at - time.monotonic())):
                return
            kind = FAULTS[k % len(FAULTS)]
            window = {"kind": kind, "start": time.monotonic(), "end": None, "error": None}
            log(f"fault: {kind}")
            try:
                self.service.inject(kind, self.outage_seconds)
            except SetupError as exc:
                window["error"] = str(exc)
                log(f"fault {kind}: the restart failed: {exc}")
            window["end"] = time.monotonic()
            log(f"fault {kind}: restored after {window['end'] - window['start']:.1f} s")
            self.windows.append(window)
            k += 1


def main() -> int:
    args = parse_args()
    children: list[Child] = []
    stripe = StripeStandIn().start()
    try:
        return run(args, children, stripe)
    except SetupError as exc:
        log(f"set-up failed: {exc}")
        return 2
    finally:
        for child in reversed(children):
            child.stop()
        stripe.stop()


def seed(port: int, operator: dict, n: int) -> list[Workspace]:
    """n users, each with a workspace on its default account (intro credit included), through the API."""
    c, found = Client(port, Stats()), []
    for i in range(n):
        status, user = c.request("seed users", "POST", "/users",
                                 json.dumps({"email": f"soak-{i}-{uuid.uuid4().hex[:8]}@example.com"}), operator)
        if status != 201:
            raise SetupError(f"POST /users answered {status}: {user}")
        auth = {"Authorization": f"Bearer {user['apiKey']}"}
        status, ws = c.request("seed workspaces", "POST", "/workspaces", json.dumps({"name": f"Soak {i}"}),
                               auth | JSON)
        if status != 201:
            raise SetupError(f"POST /workspaces answered {status}: {ws}")
        found.append(Workspace(ws["id"], ws["defaultBillingAccountId"], auth))
    c.close()
    return found


def run(args, children: list[Child], stripe: StripeStandIn) -> int:
    rng = random.Random(args.seed)
    if not port_is_free(args.redis_port):
        raise SetupError(f"port {args.redis_port} is taken; pass --redis-port")
    log(f"database {args.database}; Redis on port {args.redis_port}; Stripe stand-in at {stripe.url}")
    database_url = fresh_database(args.admin_url, args.database, 0, 0)
    token = f"soak-{secrets.token_urlsafe(16)}"
    env = {k: v for k, v in os.environ.items() if k not in ("CELERY_BROKER_URL", "BENCH_NO_REEXEC")}
    env.update(DATABASE_URL=database_url, REDIS_URL=f"redis://127.0.0.1:{args.redis_port}/0",
               BILLING_OPERATOR_TOKEN=token, PYTHONUNBUFFERED="1", WORKER_METRICS_PORT="0",
               STRIPE_API_KEY="sk_test_soak", STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET, STRIPE_API_BASE=stripe.url)
    service = Service(args, env, children)
    service.start_redis()
    port = start_api(children, env, args.api_workers, args.api_threads)
    service.start_worker()
    service.start_beat()

    operator = {"Authorization": f"Bearer {token}"} | JSON
    stats, accepted = Stats(), Accepted()
    workspaces = seed(port, operator, args.workspaces)
    workload = Workload(workspaces, operator, stripe, accepted)

    seconds = args.minutes * 60
    log(f"load: {args.clients} clients for {seconds:.0f} s on {args.workspaces} workspaces; a fault every "
        f"{args.fault_every:.0f} s ({', '.join(FAULTS)}), Redis down {args.outage_seconds:.0f} s")
    started = time.monotonic()
    deadline = started + seconds
    faults = Faults(service, started, args.fault_every, deadline, args.outage_seconds)
    faults.start()

    crashes: list[str] = []

    def client(seed: float) -> None:
        c, own = Client(port, stats), random.Random(seed)
        try:
            while time.monotonic() < deadline:
                workload.step(c, own)
        except Exception:  # a bug of the bench, not an answer of the service: reported, and the run fails
            crashes.append(traceback.format_exc())
            log(f"a client crashed:\n{crashes[-1]}")
        c.close()
    threads = [threading.Thread(target=client, args=(rng.random(),), daemon=True) for _ in range(args.clients)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        next(t for t in threads if t.is_alive()).join(max(0.0, 30 - (time.monotonic() - started) % 30))
        if time.monotonic() < deadline:
            log(f"  {time.monotonic() - started:.0f} s: {stats.total()} requests, {len(stats.failures)} 5xx/broken")
    load_seconds = time.monotonic() - started
    faults.stopping.set()
    faults.join()

    log("drain: until every accepted operation and paid checkout is finished")
    drain = wait_drained(database_url, list(accepted.paid), args.drain_timeout)
    for child in [c for c in children if c.name.split("-")[0] in ("api", "worker", "beat")]:
        child.stop()
    audit = billing(env, "audit")
    log(f"billing audit: {audit.stdout.strip().splitlines()[-1] if audit.stdout.strip() else audit.stderr[-500:]}")

    checks = check(database_url, accepted, workspaces)
    errors = classify_failures(stats, faults.windows)
    result = summarize(args, stats, accepted, checks, errors, faults, drain, audit, load_seconds, started)
    result["client_crashes"] = crashes
    result["passed"] = result["passed"] and not crashes
    path = write_result(args.output, result)
    report(result)
    log(f"written to {path}")
    return 0 if result["passed"] else 1


DRAIN_SQL = """
SELECT (SELECT count(*) FROM operations WHERE status IN ('queued', 'running')),
       (SELECT count(*) FROM checkouts WHERE id = ANY(%(paid)s::text[]) AND status = 'pending'),
       (SELECT count(*) FROM stripe_events WHERE processed_at IS NULL)
"""


def wait_drained(url: str, paid: list[str], timeout: float) -> dict:
    """Poll until no operation is unfinished, no paid checkout pending and every Stripe event applied."""
    start, said = time.monotonic(), 0.0
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            ops, checkouts, events = conn.execute(DRAIN_SQL, {"paid": paid}).fetchone()
            waited = time.monotonic() - start
            if ops == checkouts == events == 0 or waited > timeout:
                break
            if waited - said >= 15:
                said = waited
                log(f"  drain {waited:.0f} s: {ops} operations unfinished, {checkouts} paid checkouts pending, "
                    f"{events} Stripe events unapplied")
            time.sleep(0.5)
    remaining = {"operations": ops, "paid_checkouts": checkouts, "stripe_events": events}
    log(f"drain: {waited:.1f} s; left {remaining}")
    return {"seconds": round(waited, 1), "complete": ops == checkouts == events == 0, "left": remaining}


def check(url: str, accepted: Accepted, workspaces: list[Workspace]) -> dict:
    """Every acknowledged credit, usage event and payment against the ledger: applied, lost, applied twice."""
    with psycopg.connect(url) as conn:
        credit_ops = {key: (op_id, status) for key, op_id, status in conn.execute(
            "SELECT idempotency_key, id, status FROM operations WHERE kind = 'credit'")}
        credit_entries = {ref: (n, cents) for ref, n, cents in conn.execute(
            "SELECT reference, count(*), sum(amount_cents) FROM ledger_entries WHERE kind = 'credit_grant' "
            "GROUP BY reference")}
        usage_ops = dict(conn.execute("SELECT id, status FROM operations WHERE kind = 'usage'").fetchall())
        usage_entries = {(ws, ref): n for ws, ref, n in conn.execute(
            "SELECT workspace_id, reference, count(*) FROM ledger_entries WHERE kind = 'usage' GROUP BY 1, 2")}
        refused = {(ws, e["eventId"]) for ws, result in conn.execute(
            "SELECT workspace_id, result FROM operations WHERE kind = 'usage' AND status = 'succeeded'")
            for e in result["events"] if e["status"] == "refused"}
        topups = {ref: (n, cents) for ref, n, cents in conn.execute(
            "SELECT reference, count(*), sum(amount_cents) FROM ledger_entries WHERE kind = 'stripe_topup' "
            "GROUP BY reference")}
        checkout_status = dict(conn.execute("SELECT id, status FROM checkouts").fetchall())
        balances = dict(conn.execute("SELECT id, balance_cents FROM billing_accounts").fetchall())
        intro = dict(conn.execute("SELECT billing_account_id, sum(amount_cents) FROM ledger_entries "
                                  "WHERE kind = 'intro_credit' GROUP BY 1").fetchall())

    account_of = {w.id: w.account_id for w in workspaces}
    expected = Counter({a: intro.get(a, 0) for a in account_of.values()})
    lost = dict.fromkeys(("credits", "usage_batches", "usage_events", "payments"), 0)
    duplicates, wrong = dict.fromkeys(("credits", "usage_events", "payments"), 0), []
    for key, (ws, amount, op_id) in accepted.credits.items():
        found_op, status = credit_ops.get(key, (None, None))
        n, cents = credit_entries.get(op_id, (0, 0))
        if found_op != op_id:
            wrong.append(f"credit key {key}: operation {found_op}, but the API answered {op_id}")
        if status != "succeeded" or n == 0:
            lost["credits"] += 1
        duplicates["credits"] += max(0, n - 1)
        if n and cents != amount * n:
            wrong.append(f"credit {op_id}: {cents} cents posted for {amount}")
        expected[account_of[ws]] += amount
    lost["usage_batches"] = sum(usage_ops.get(op_id) != "succeeded" for _, op_id in accepted.usage_batches.values())
    debited = 0
    for (ws, event_id), amount in accepted.usage_events.items():
        n = usage_entries.get((ws, event_id), 0)
        if n == 0 and (ws, event_id) not in refused:
            lost["usage_events"] += 1
        duplicates["usage_events"] += max(0, n - 1)
        if n:
            debited += 1
            expected[account_of[ws]] -= amount
    for chk, (ws, amount, session_id) in accepted.paid.items():
        n, cents = topups.get(session_id, (0, 0))
        if n == 0 or checkout_status.get(chk) != "completed":
            lost["payments"] += 1
        duplicates["payments"] += max(0, n - 1)
        expected[account_of[ws]] += amount
    known_credit_ops = {op_id for _, _, op_id in accepted.credits.values()}
    unexpected = {
        "credit_entries": sum(n for ref, (n, _) in credit_entries.items() if ref not in known_credit_ops),
        "usage_entries": sum(n for k, n in usage_entries.items() if k not in accepted.usage_events),
        "stripe_topups": sum(n for ref, (n, _) in topups.items()
                             if ref not in {s for _, _, s in accepted.paid.values()}),
    }
    mismatched = {a: (balances.get(a), cents) for a, cents in expected.items() if balances.get(a) != cents}
    return {
        "credits": {"accepted": len(accepted.credits),
                    "applied": sum(credit_entries.get(op, (0,))[0] >= 1 for _, _, op in accepted.credits.values())},
        "usage_batches": {"accepted": len(accepted.usage_batches),
                          "applied": sum(usage_ops.get(op) == "succeeded"
                                         for _, op in accepted.usage_batches.values())},
        "usage_events": {"accepted": len(accepted.usage_events), "debited": debited,
                         "refused": len(refused & set(accepted.usage_events))},
        "payments": {"paid": len(accepted.paid),
                     "credited": sum(topups.get(s, (0,))[0] >= 1 for _, _, s in accepted.paid.values())},
        "lost": lost, "duplicates": duplicates, "unexpected_entries": unexpected,
        "wrong": wrong[:20], "balance_mismatches": len(mismatched),
        "balance_mismatch_examples": dict(list(mismatched.items())[:10]),
    }


def classify_failures(stats: Stats, windows: list[dict]) -> dict:
    """A 503 that overlaps a Redis outage (or its grace period) is the outage's; every other 5xx or broken
    connection is a failure of the service."""
    outages = [(w["start"], (w["end"] or w["start"]) + OUTAGE_GRACE_SECONDS) for w in windows
               if w["kind"] == "redis_stop"]
    during_outage, unexpected = Counter(), Counter()
    for start, end, label, status in stats.failures:
        if status == 503 and any(start <= b and end >= a for a, b in outages):
            during_outage[f"{label} {status}"] += 1
        else:
            unexpected[f"{label} {status}"] += 1
    return {"during_outage_503": dict(during_outage), "unexpected": dict(unexpected)}


def summarize(args, stats: Stats, accepted: Accepted, checks: dict, errors: dict, faults: Faults, drain: dict,
              audit, load_seconds: float, started: float) -> dict:
    endpoints = {}
    for label in sorted(stats.statuses):
        lat = stats.latencies[label]
        ms = (lambda q: round(percentile(lat, q) * 1000, 1) if lat else None)
        endpoints[label] = {"requests": sum(stats.statuses[label].values()), "p50_ms": ms(0.5), "p99_ms": ms(0.99),
                            "statuses": {str(k): v for k, v in sorted(stats.statuses[label].items(), key=str)}}
    requests = sum(e["requests"] for e in endpoints.values())
    accepted_ops = checks["credits"]["accepted"] + checks["usage_batches"]["accepted"] + checks["payments"]["paid"]
    applied_ops = checks["credits"]["applied"] + checks["usage_batches"]["applied"] + checks["payments"]["credited"]
    duplicates = sum(checks["duplicates"].values())
    lost = sum(checks["lost"].values())
    failed_restarts = [w for w in faults.windows if w["error"]]
    passed = (duplicates == 0 and lost == 0 and not errors["unexpected"] and audit.returncode == 0
              and drain["complete"] and not accepted.unacknowledged and not checks["balance_mismatches"]
              and not checks["wrong"] and not accepted.violations and not any(checks["unexpected_entries"].values())
              and not failed_restarts)
    return {
        "passed": passed,
        "config": {k: v for k, v in vars(args).items() if k != "admin_url"},
        "load_seconds": round(load_seconds, 1), "requests": requests,
        "requests_per_s": round(requests / load_seconds, 1),
        "endpoints": endpoints,
        "faults": [{"kind": w["kind"], "at_s": round(w["start"] - started, 1),
                    "restored_after_s": round(w["end"] - w["start"], 1), "error": w["error"]} for w in faults.windows],
        "errors": errors,
        "operations": {"accepted": accepted_ops, "applied": applied_ops, **{k: checks[k] for k in (
            "credits", "usage_batches", "usage_events", "payments")},
            "webhooks_acknowledged": accepted.webhooks_acknowledged},
        "duplicates": duplicates, "duplicates_by_kind": checks["duplicates"],
        "replay_violations": accepted.violations[:20],
        "lost": lost, "lost_by_kind": checks["lost"], "unacknowledged": accepted.unacknowledged[:20],
        "unexpected_entries": checks["unexpected_entries"], "wrong": checks["wrong"],
        "balance_mismatches": checks["balance_mismatches"],
        "balance_mismatch_examples": checks["balance_mismatch_examples"],
        "drain": drain,
        "audit": {"ok": audit.returncode == 0, "output": (audit.stdout + audit.stderr).strip().splitlines()[-20:]},
    }


def report(res: dict) -> None:
    lines = [f"{'endpoint':<30} {'requests':>9} {'p50 ms':>8} {'p99 ms':>8}  statuses"]
    for label, e in res["endpoints"].items():
        statuses = " ".join(f"{k}:{v}" for k, v in e["statuses"].items())
        lines.append(f"{label:<30} {e['requests']:>9} {e['p50_ms'] or '-':>8} {e['p99_ms'] or '-':>8}  {statuses}")
    ops = res["operations"]
    faults = ", ".join(f"{f['kind']}@{f['at_s']:.0f}s (restored in {f['restored_after_s']:.0f} s)"
                       + (" RESTART FAILED" if f["error"] else "") for f in res["faults"]) or "none"
    lines += [
        f"requests: {res['requests']} in {res['load_seconds']:.0f} s ({res['requests_per_s']}/s)",
        f"faults: {faults}",
        f"5xx during Redis outages (503): {sum(res['errors']['during_outage_503'].values())}; "
        f"other 5xx or broken connections: {res['errors']['unexpected'] or 0}",
        f"operations: accepted {ops['accepted']}, applied {ops['applied']} (credits {ops['credits']['applied']}/"
        f"{ops['credits']['accepted']}, usage batches {ops['usage_batches']['applied']}/"
        f"{ops['usage_batches']['accepted']}, Stripe payments {ops['payments']['credited']}/"
        f"{ops['payments']['paid']}); "
        f"usage events {ops['usage_events']['debited']} debited of {ops['usage_events']['accepted']} distinct "
        f"({ops['usage_events']['refused']} refused)",
        f"duplicates: {res['duplicates']} {res['duplicates_by_kind']}   lost: {res['lost']} {res['lost_by_kind']}   "
        f"unacknowledged: {len(res['unacknowledged'])}   balance mismatches: {res['balance_mismatches']}",
        f"drain: {res['drain']['seconds']} s ({'complete' if res['drain']['complete'] else 'INCOMPLETE'})   "
        f"audit: {'ok' if res['audit']['ok'] else 'FAILED'}   result: {'PASS' if res['passed'] else 'FAIL'}",
    ]
    for what in ("replay_violations", "unacknowledged", "wrong"):
        lines += [f"  {what}: {x}" for x in res[what][:5]]
    if not res["audit"]["ok"]:
        lines += [f"  audit: {x}" for x in res["audit"]["output"][:10]]
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    sys.exit(main())
