"""A Stripe webhook storm while credits and usage are posted, against the served API and a real worker.

1,000 deliveries to POST /webhooks/stripe from several threads: every real event many times over (the
same bytes and signature, and re-signed later as Stripe's retries are), two paid events for some
payments, in shuffled order (for half of the async payments the success comes before the unpaid
`completed`), events for sessions that are not ours or of a type we ignore, and forgeries (another
secret, a body changed after signing, a stale timestamp, a legitimate body under a swapped timestamp, no
or a junk signature). Meanwhile the operator posts credits and usage batches, some twice with one
Idempotency-Key, and runs the Stripe reconcile job, which credits paid sessions on its own path.
Afterwards each paid checkout holds exactly one stripe_topup of its amount, no forgery left a trace in
any table, every accepted operation posted once, nothing answered 5xx, the balances add up and
`billing audit` is clean.
"""
import json
import random
import re
import time
import uuid
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sqlalchemy import text

from tests.processes import assert_applied_once, assert_audit_passes, wait_for_operations, wait_until
from tests.standins.stripe_api import signed_event, stripe_signature

SECRET = "whsec_storm_secret"
DELIVERIES = 1000
WORKSPACES = 6
FATES = ["paid twice"] + ["paid"] * 2 + ["async"] + ["expired"]  # the checkouts of each workspace
# What applying a checkout's events may report: which event credits depends on the order, and the
# reconcile job may have credited or expired the checkout first.
OUTCOMES = {"paid": {"credited", "already_credited"},
            "async": {"awaiting_payment", "credited", "already_credited"},
            "expired": {"expired", "already_expired"}}
UNKNOWN_SESSIONS = 16  # paid sessions of someone else's (no client_reference_id, or not one of ours)
GHOSTS = 2  # paid sessions naming a checkout id of our form that we never created (another environment's)
IGNORED = 4  # events of a type the service does not act on
COPIES = 10  # deliveries of each real event, RESIGNED of them under a later timestamp
RESIGNED = 3
CREDITS = 6  # per workspace, each sent twice with one Idempotency-Key
USAGE_EVENTS, USAGE_BATCHES, BATCH_SIZE = 12, 5, 4  # per workspace; batches overlap, one is sent twice
THREADS = 8  # the API serves 8 threads
INTRO_CENTS = 1000
FORGERIES = ("wrong_secret", "tampered", "stale", "missing", "junk", "v0_only")


@dataclass
class Checkout:
    id: str
    session_id: str
    account_id: str
    amount_cents: int
    fate: str


@dataclass
class Request:
    label: str  # event, forged, swapped, credit, usage
    key: str  # the event id or the Idempotency-Key the outcome is grouped by
    path: str
    body: bytes
    headers: dict = field(default_factory=dict)
    operator: bool = False


def open_checkouts(stack_api, owners, workspaces) -> list[Checkout]:
    """Each workspace's checkouts, created through the API (the stand-in plays Stripe), the workspaces in parallel."""
    def open_all(w: int) -> list[Checkout]:
        opened = []
        for c, fate in enumerate(FATES):
            created = stack_api.call("POST", f"/workspaces/{workspaces[w]['id']}/billing/checkout", owners[w].key,
                                     json={"amountCents": 500 + 37 * w + 11 * c,
                                           "successUrl": "https://app.example/ok",
                                           "cancelUrl": "https://app.example/no"})
            assert created.status_code == 201, created.text
            body = created.json
            opened.append(Checkout(body["id"], body["stripeSessionId"], body["billingAccountId"],
                                   body["amountCents"], fate))
        return opened

    with ThreadPoolExecutor(len(workspaces)) as pool:
        return [checkout for opened in pool.map(open_all, range(len(workspaces))) for checkout in opened]


def real_events(checkouts: list[Checkout], stripe_api, tag: str) -> list[tuple[str, str, dict, Checkout | str]]:
    """(event id, type, object, its checkout or "unknown", "ghost", "ignored") for everything Stripe
    would really send."""
    events, n = [], iter(range(10**6))

    def event(kind, obj, checkout):
        events.append((f"evt_{tag}_{next(n)}", kind, obj, checkout))

    for checkout in checkouts:
        if checkout.fate.startswith("paid"):
            event("checkout.session.completed", stripe_api.pay(checkout.session_id), checkout)
            if checkout.fate == "paid twice":  # one payment, two paid events
                paid = dict(stripe_api.sessions[checkout.session_id])
                event("checkout.session.async_payment_succeeded", paid, checkout)
        elif checkout.fate == "async":
            event("checkout.session.completed", stripe_api.pay(checkout.session_id, paid=False), checkout)
            event("checkout.session.async_payment_succeeded", stripe_api.settle_async(checkout.session_id), checkout)
        else:
            event("checkout.session.expired", stripe_api.expire(checkout.session_id), checkout)
    for i in range(UNKNOWN_SESSIONS + GHOSTS):
        reference = f"chk_{uuid.uuid4().hex}" if i < GHOSTS else None if i % 2 else f"order-{i}"
        event("checkout.session.completed", {
            "id": f"cs_test_unknown{tag}_{i}", "object": "checkout.session", "status": "complete",
            "payment_status": "paid", "amount_total": 900 + i, "currency": "usd",
            "client_reference_id": reference, "payment_intent": f"pi_unknown{tag}_{i}",
        }, "ghost" if i < GHOSTS else "unknown")
    for i in range(IGNORED):
        event("payment_intent.succeeded", {"id": f"pi_ignored{tag}_{i}", "object": "payment_intent", "amount": 700},
              "ignored")
    return events


def webhook(label: str, key: str, payload: bytes, signature: str | None) -> Request:
    headers = {"Content-Type": "application/json"} | ({"Stripe-Signature": signature} if signature else {})
    return Request(label, key, "/webhooks/stripe", payload, headers)


def deliveries(events, rng: random.Random) -> list[Request]:
    """COPIES of each real event (some re-signed later, as Stripe's retries are) and, per event, its body
    under a signature whose timestamp was swapped for another."""
    out = []
    for event_id, kind, obj, _ in events:
        payload, signature = signed_event(SECRET, kind, obj, event_id=event_id)
        stamp = int(signature.split(",")[0][2:])
        out += [webhook("event", event_id, payload, signature)] * (COPIES - RESIGNED)
        out += [webhook("event", event_id, payload, stripe_signature(SECRET, payload, stamp + rng.randrange(1, 60)))
                for _ in range(RESIGNED)]
        out.append(webhook("swapped", event_id, payload, signature.replace(f"t={stamp},", f"t={stamp + 7},")))
    return out


def forgeries(count: int, checkouts: list[Checkout], stripe_api, tag: str, rng: random.Random) -> list[Request]:
    """Events that would credit a real checkout if believed; every one carries `forged{tag}`."""
    out = []
    for i in range(count):
        checkout = rng.choice(checkouts)
        obj = dict(stripe_api.sessions[checkout.session_id], status="complete", payment_status="paid")
        event_id, how = f"evt_forged{tag}_{i}", FORGERIES[i % len(FORGERIES)]
        payload, signature = signed_event(SECRET, "checkout.session.completed", obj, event_id=event_id)
        now = int(time.time())
        if how == "wrong_secret":
            signature = stripe_signature("whsec_not_ours", payload)
        elif how == "tampered":
            payload = payload.replace(b'"amount_total": %d' % obj["amount_total"], b'"amount_total": 99999')
        elif how == "stale":
            signature = stripe_signature(SECRET, payload, now - 3600)
        elif how == "missing":
            signature = None
        elif how == "junk":
            signature = f"t={now},v1={rng.randbytes(32).hex()}"
        elif how == "v0_only":
            signature = signature.replace("v1=", "v0=")
        out.append(webhook("forged", event_id, payload, signature))
    return out


def money_requests(workspaces, tag: str, rng: random.Random) -> tuple[list[Request], dict, dict]:
    """Credits (each key twice) and overlapping usage batches (one sent twice); per account, the credit
    amounts and the {eventId: cents} of usage to expect in its ledger."""
    out, credits, usage = [], defaultdict(list), defaultdict(dict)
    for w, workspace in enumerate(workspaces):
        account = workspace["defaultBillingAccountId"]
        for c in range(CREDITS):
            amount, key = 100 + 10 * w + c, f"storm-{tag}-credit-{w}-{c}"
            credits[account].append(amount)
            out += [Request("credit", key, f"/workspaces/{workspace['id']}/billing/credits",
                            json.dumps({"amountCents": amount}).encode(), {"Idempotency-Key": key}, True)] * 2
        pool = [{"eventId": f"use-{tag}-{w}-{e}", "metric": "api_calls", "quantity": 1 + e,
                 "amountCents": 1 + e % 5} for e in range(USAGE_EVENTS)]
        for b in range(USAGE_BATCHES):
            batch, key = rng.sample(pool, BATCH_SIZE), f"storm-{tag}-usage-{w}-{b}"
            usage[account].update((e["eventId"], e["amountCents"]) for e in batch)
            out += [Request("usage", key, f"/workspaces/{workspace['id']}/billing/usage",
                            json.dumps({"events": batch}).encode(), {"Idempotency-Key": key}, True)] * (1 + (b == 0))
    return out, dict(credits), dict(usage)


def reorder_async(storm: list[Request], events, checkouts: list[Checkout]) -> None:
    """For every other async checkout, move all copies of the success ahead of the unpaid `completed`."""
    pairs = [[event_id for event_id, *_, c in events if c is checkout] for checkout in checkouts
             if checkout.fate == "async"]
    for completed_id, succeeded_id in pairs[::2]:
        at = [i for i, r in enumerate(storm) if r.label == "event" and r.key in (completed_id, succeeded_id)]
        moved = sorted((storm[i] for i in at), key=lambda r: r.key != succeeded_id)
        for i, request in zip(at, moved):
            storm[i] = request


def send(stack_api, request: Request):
    """One request; a copy whose Idempotency-Key is still in progress elsewhere is retried, as a client would."""
    call = stack_api.operator if request.operator else stack_api.call
    for _ in range(50):
        result = call("POST", request.path, body=request.body,
                      headers={"Content-Type": "application/json"} | request.headers)
        if not (result.status_code == 409 and "still in progress" in result.text):
            break
        time.sleep(0.1)
    return request, result


def table_rows_containing(engine, needle: str) -> dict[str, int]:
    """Every table of the schema, searched row by row as text."""
    with engine.connect() as conn:
        tables = conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).scalars().all()
        found = {t: conn.execute(text(f'SELECT count(*) FROM "{t}" AS r WHERE CAST(r AS text) LIKE :p'),
                                 {"p": f"%{needle}%"}).scalar() for t in tables}
    return {t: n for t, n in found.items() if n}


def rows(engine, sql: str, **params) -> list:
    with engine.connect() as conn:
        return conn.execute(text(sql), params).all()


def test_a_webhook_storm_credits_each_payment_once_and_stores_no_forgery(stack, api, engine, stripe_api):
    stack.env.update(STRIPE_API_KEY="sk_test_storm", STRIPE_WEBHOOK_SECRET=SECRET, STRIPE_API_BASE=stripe_api.url,
                     STRIPE_RECONCILE_AFTER="0")
    stack.start()
    tag = uuid.uuid4().hex[:10]
    rng = random.Random(tag)
    print(f"storm tag (the random seed): {tag}")
    owners = [api.new_user(f"Storm{i}") for i in range(WORKSPACES)]  # in-process: no provisioning tasks
    workspaces = [api.new_workspace(owner) for owner in owners]
    checkouts = open_checkouts(stack.api, owners, workspaces)

    events = real_events(checkouts, stripe_api, tag)
    storm = deliveries(events, rng)
    storm += forgeries(DELIVERIES - len(storm), checkouts, stripe_api, tag, rng)
    assert len(storm) == DELIVERIES
    money, credits, usage = money_requests(workspaces, tag, rng)
    storm += money
    rng.shuffle(storm)
    reorder_async(storm, events, checkouts)

    started = time.monotonic()
    answers = []
    with ThreadPoolExecutor(THREADS) as pool:
        for answer in pool.map(lambda r: send(stack.api, r), storm):
            answers.append(answer)
            if len(answers) == len(storm) // 20:  # beat's job, racing the webhooks to credit what is left
                reconcile = stack.send_task("payments.reconcile_stripe")
    print(f"{len(storm)} requests ({DELIVERIES} webhooks) in {time.monotonic() - started:.1f} s")

    operations = assert_answered_as_the_contract_says(answers, events)
    assert wait_for_operations(engine, operations, timeout=30) == {op: "succeeded" for op in operations}
    # A ghost's event is retried while its checkout might still become visible: not waited for.
    applicable = [event_id for event_id, *_, what in events if what != "ghost"]
    applied = "SELECT count(*) FROM stripe_events WHERE id = ANY(:ids) AND processed_at IS NOT NULL"
    wait_until(lambda: rows(engine, applied, ids=applicable)[0][0] == len(applicable), 30,
               "the worker to apply every stored event", every=0.2)
    done = rf"payments\.reconcile_stripe\[{reconcile}\] succeeded in \S+ (\d+)"
    reconciled = wait_until(lambda: re.search(done, stack.worker.output()), 30, "the reconcile job")

    credited_by_webhook = assert_events_applied_once(engine, events, checkouts, tag)
    print(f"webhooks credited {credited_by_webhook} checkout(s); the reconcile job found {reconciled[1]} pending")
    assert table_rows_containing(engine, f"forged{tag}") == {}, "a forgery left a trace"
    assert_applied_once(engine, sorted({a.json["id"] for r, a in answers if r.label == "credit"}))
    assert_ledger_holds_exactly(engine, workspaces, checkouts, credits, usage)
    for owner, workspace in zip(owners, workspaces):
        read = stack.api.call("GET", f"/workspaces/{workspace['id']}/billing/balance", owner.key).json
        assert read["balanceCents"] == rows(engine, "SELECT balance_cents FROM billing_accounts WHERE id = :a",
                                            a=workspace["defaultBillingAccountId"])[0][0]
    assert_audit_passes(stack)


def assert_answered_as_the_contract_says(answers, events) -> list[str]:
    """Nothing 5xx; real events 200 and stored by exactly one delivery each, forgeries 400, money 202 with
    one operation per Idempotency-Key; the operations' ids."""
    assert [(r.label, a.status_code, a.text) for r, a in answers if a.status_code >= 500] == []
    expected = {"event": 200, "forged": 400, "swapped": 400, "credit": 202, "usage": 202}
    assert [(r.label, r.key, a.status_code, a.text) for r, a in answers if a.status_code != expected[r.label]] == []
    assert {a.headers["Content-Type"] for r, a in answers if a.status_code == 400} == {"application/problem+json"}
    stored_by = Counter(r.key for r, a in answers if r.label == "event" and not a.json["duplicate"])
    assert stored_by == {event_id: 1 for event_id, *_ in events}, "each real event stored by exactly one delivery"
    operation_of = defaultdict(set)
    for r, a in answers:
        if r.label in ("credit", "usage"):
            operation_of[r.key].add(a.json["id"])
    assert {k: ids for k, ids in operation_of.items() if len(ids) != 1} == {}, "a replay answers the first operation"
    return [op for ids in operation_of.values() for op in ids]


def assert_events_applied_once(engine, events, checkouts: list[Checkout], tag: str) -> int:
    """Each real event stored once and applied, nothing else of the storm stored, no checkout credited
    twice, nobody else's session adopted; how many checkouts the webhooks (not the reconcile job) credited."""
    outcomes = dict(rows(engine, "SELECT id, outcome FROM stripe_events WHERE id LIKE :p", p=f"%{tag}%"))
    assert set(outcomes) == {event_id for event_id, *_ in events}
    for checkout in checkouts:
        mine = [outcomes[event_id] for event_id, _, _, c in events if c is checkout]
        assert set(mine) <= OUTCOMES[checkout.fate.split()[0]] and mine.count("credited") <= 1, (checkout, mine)
    assert Counter(outcomes[event_id] for event_id, _, _, what in events if what in ("unknown", "ignored")) == {
        "unknown_session": UNKNOWN_SESSIONS, "ignored": IGNORED}

    status = dict(rows(engine, "SELECT id, status FROM checkouts WHERE id = ANY(:i)", i=[c.id for c in checkouts]))
    assert status == {c.id: "expired" if c.fate == "expired" else "completed" for c in checkouts}
    unknown = [obj["id"] for _, _, obj, what in events if what in ("unknown", "ghost")]
    assert rows(engine, "SELECT count(*) FROM checkouts WHERE provider_ref = ANY(:s)", s=unknown)[0][0] == 0
    assert rows(engine, "SELECT count(*) FROM ledger_entries WHERE reference = ANY(:s)", s=unknown)[0][0] == 0
    return list(outcomes.values()).count("credited")


def assert_ledger_holds_exactly(engine, workspaces, checkouts: list[Checkout], credits: dict, usage: dict) -> None:
    """Per account: one intro credit, one top-up per paid checkout, the credits once, each distinct usage
    event once; cached balance = sum of entries = intro + credits + top-ups - usage, per account and in total."""
    accounts = [w["defaultBillingAccountId"] for w in workspaces]
    entries = rows(engine, "SELECT billing_account_id, kind, amount_cents, reference FROM ledger_entries "
                           "WHERE billing_account_id = ANY(:a)", a=accounts)
    paid = [c for c in checkouts if c.fate != "expired"]
    by_kind = defaultdict(Counter)
    for account, kind, cents, reference in entries:
        by_kind[kind][(account, reference if kind in ("stripe_topup", "usage") else None, cents)] += 1
    assert by_kind["stripe_topup"] == Counter((c.account_id, c.session_id, c.amount_cents) for c in paid)
    assert by_kind["intro_credit"] == Counter((a, None, INTRO_CENTS) for a in accounts)
    assert by_kind["credit_grant"] == Counter((a, None, cents) for a in accounts for cents in credits[a])
    assert by_kind["usage"] == Counter((a, event_id, -cents) for a in accounts
                                       for event_id, cents in usage[a].items())
    assert set(by_kind) == {"stripe_topup", "intro_credit", "credit_grant", "usage"}

    expected = {a: INTRO_CENTS + sum(credits[a]) + sum(c.amount_cents for c in paid if c.account_id == a)
                - sum(usage[a].values()) for a in accounts}
    cached = dict(rows(engine, "SELECT id, balance_cents FROM billing_accounts WHERE id = ANY(:a)", a=accounts))
    summed = Counter()
    for account, _, cents, _ in entries:
        summed[account] += cents
    assert cached == dict(summed) == expected
    assert sum(cached.values()) == (INTRO_CENTS * len(accounts) + sum(map(sum, credits.values()))
                                    + sum(c.amount_cents for c in paid) - sum(sum(u.values()) for u in usage.values()))
