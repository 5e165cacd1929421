"""Stripe Checkout top-ups through the real SDK against a loopback stand-in, on real PostgreSQL."""
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from falcon import testing
from sqlalchemy import text

from api.app import create_app
from domain.providers.stripe_gateway import StripeGateway
from domain.services.context import Config, Context
from domain.services.rate_limits import RECOMPUTE_TASK
from domain.services.registry import Services
from domain.store.uow import UnitOfWork
from tests.factories import OPERATOR_TOKEN, Api
from tests.standins.stripe_api import StripeStandIn, charge_refunded, signed_event

SECRET = "whsec_test_secret"


@pytest.fixture(scope="module")
def stripe_api():
    standin = StripeStandIn().start()
    yield standin
    standin.stop()


@pytest.fixture
def stripe_services(engine, queue, stripe_api) -> Services:
    gateway = StripeGateway("sk_test_standin", SECRET, stripe_api.url, timeout_seconds=2)
    return Services(Context(uow=lambda: UnitOfWork(engine), enqueue=queue, config=Config(), stripe=gateway))


@pytest.fixture
def sapi(stripe_services) -> Api:
    return Api(testing.TestClient(create_app(stripe_services, OPERATOR_TOKEN, {})))


@pytest.fixture
def owner_ws(sapi):
    owner = sapi.new_user()
    return owner, sapi.new_workspace(owner)


def _checkout(api: Api, owner, ws, amount=1500, **headers):
    result = api.call("POST", f"/workspaces/{ws['id']}/billing/checkout", owner.key,
                      json={"amountCents": amount, "successUrl": "https://app.example/ok",
                            "cancelUrl": "https://app.example/cancel"}, headers=headers)
    assert result.status_code == 201, result.text
    return result.json


def _deliver(api: Api, event_type: str, obj: dict, **kwargs):
    payload, signature = signed_event(SECRET, event_type, obj, **kwargs)
    return api.call("POST", "/webhooks/stripe", body=payload,
                    headers={"Stripe-Signature": signature, "Content-Type": "application/json"})


def _apply_queued(services: Services, queue) -> list:
    outcomes = [services.stripe.apply_event(kwargs["event_id"]) for name, kwargs in queue.sent
                if name == "payments.apply_stripe_event"]
    queue.sent.clear()
    return outcomes


def _balance(api: Api, owner, ws) -> int:
    return api.call("GET", f"/workspaces/{ws['id']}/billing/balance", owner.key).json["balanceCents"]


def _topups(engine, account_id: str) -> list[int]:
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT amount_cents FROM ledger_entries WHERE billing_account_id = :a "
                                      "AND kind IN ('stripe_topup', 'refund') ORDER BY id"), {"a": account_id}).scalars())


def _assert_sound(services: Services, account_id: str) -> None:
    assert [p for p in services.operations.audit(stuck_after=timedelta(hours=1)) if account_id in p] == []


def test_a_paid_checkout_is_credited_once_to_the_workspace_default_account(sapi, stripe_api, stripe_services, queue, owner_ws):
    owner, ws = owner_ws
    checkout = _checkout(sapi, owner, ws)
    assert checkout["status"] == "pending" and checkout["provider"] == "stripe"
    assert checkout["url"].startswith("https://") and checkout["stripeSessionId"].startswith("cs_test_")
    session = stripe_api.sessions[checkout["stripeSessionId"]]
    assert session["client_reference_id"] == checkout["id"] and session["metadata"]["workspace_id"] == ws["id"]
    assert _deliver(sapi, "checkout.session.completed", stripe_api.pay(session["id"])).status_code == 200
    assert _apply_queued(stripe_services, queue) == ["credited"]
    assert _balance(sapi, owner, ws) == 1000 + 1500
    read = sapi.call("GET", f"/workspaces/{ws['id']}/billing/checkouts/{checkout['id']}", owner.key).json
    assert read["status"] == "completed" and read["completedAt"] is not None
    _assert_sound(stripe_services, owner.default_account_id)


def test_the_same_event_delivered_ten_times_concurrently_credits_once(sapi, stripe_api, stripe_services, queue, owner_ws, engine):
    owner, ws = owner_ws
    checkout = _checkout(sapi, owner, ws, amount=700)
    payload, signature = signed_event(SECRET, "checkout.session.completed", stripe_api.pay(checkout["stripeSessionId"]))
    headers = {"Stripe-Signature": signature, "Content-Type": "application/json"}
    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(lambda _: sapi.call("POST", "/webhooks/stripe", body=payload, headers=headers), range(10)))
    assert [r.status_code for r in results] == [200] * 10
    assert sum(1 for r in results if not r.json["duplicate"]) == 1
    _apply_queued(stripe_services, queue)
    assert _topups(engine, owner.default_account_id) == [700]


def test_completed_and_async_payment_succeeded_for_one_checkout_credit_once(sapi, stripe_api, stripe_services, queue, owner_ws, engine):
    owner, ws = owner_ws
    checkout = _checkout(sapi, owner, ws, amount=900)
    pending = stripe_api.pay(checkout["stripeSessionId"], paid=False)
    _deliver(sapi, "checkout.session.completed", pending)
    assert _apply_queued(stripe_services, queue) == ["awaiting_payment"]
    paid = stripe_api.settle_async(checkout["stripeSessionId"])
    _deliver(sapi, "checkout.session.async_payment_succeeded", paid)
    _deliver(sapi, "checkout.session.completed", paid)
    events = [kwargs["event_id"] for name, kwargs in queue.sent if name == "payments.apply_stripe_event"]
    queue.sent.clear()
    assert sorted(stripe_services.stripe.apply_event(event_id) for event_id in events) == ["already_credited",
                                                                                        "credited"]
    assert [name for name, _ in queue.sent] == [RECOMPUTE_TASK]  # money moved once: one tier recompute
    assert _topups(engine, owner.default_account_id) == [900]


def test_an_event_for_a_checkout_not_yet_visible_is_retried_and_then_credited(sapi, stripe_api, stripe_services, queue, owner_ws, engine):
    owner, ws = owner_ws
    ghost = "chk_" + "ab" * 16
    session = {"id": "cs_test_early", "object": "checkout.session", "status": "complete", "payment_status": "paid",
               "amount_total": 400, "currency": "usd", "client_reference_id": ghost, "payment_intent": "pi_early"}
    _deliver(sapi, "checkout.session.completed", session)
    with pytest.raises(Exception) as raised:
        _apply_queued(stripe_services, queue)
    assert type(raised.value).__name__ == "CheckoutNotVisibleYet"
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO checkouts (id, provider, workspace_id, billing_account_id, amount_cents, created_by) "
                          "VALUES (:id, 'stripe', :ws, :a, 400, :u)"), {"id": ghost, "ws": ws["id"], "a": owner.default_account_id, "u": owner.id})
        event_id = conn.execute(text("SELECT id FROM stripe_events WHERE payload->'object'->>'id' = 'cs_test_early'")).scalar()
    assert stripe_services.stripe.apply_event(event_id) == "credited"
    assert _topups(engine, owner.default_account_id) == [400]


def test_an_event_for_a_checkout_id_that_never_appears_is_closed_as_unknown_after_a_while(sapi, stripe_services, queue,
                                                                                         engine):
    ghost = "chk_" + "cd" * 16  # shaped like ours: another deployment sharing the Stripe account
    session = {"id": "cs_test_ghost", "object": "checkout.session", "status": "complete", "payment_status": "paid",
               "amount_total": 400, "currency": "usd", "client_reference_id": ghost, "payment_intent": "pi_ghost"}
    _deliver(sapi, "checkout.session.completed", session)
    with pytest.raises(Exception) as raised:
        _apply_queued(stripe_services, queue)
    assert type(raised.value).__name__ == "CheckoutNotVisibleYet"  # young: maybe not visible yet, retried
    with engine.begin() as conn:
        event_id = conn.execute(text("UPDATE stripe_events SET received_at = now() - interval '11 minutes' "
                                     "WHERE payload->'object'->>'id' = 'cs_test_ghost' RETURNING id")).scalar()
        entries = conn.execute(text("SELECT count(*) FROM ledger_entries")).scalar()
    assert stripe_services.stripe.apply_event(event_id) == "unknown_session"
    assert stripe_services.stripe.apply_event(event_id) is None  # processed: never retried again
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM ledger_entries")).scalar() == entries


@pytest.mark.parametrize("forge", ["wrong_secret", "stale", "missing", "tampered"])
def test_a_forged_stale_or_missing_signature_is_refused_and_stores_nothing(sapi, engine, forge):
    obj = {"id": f"cs_test_forged_{forge}", "object": "checkout.session", "client_reference_id": None}
    payload, signature = signed_event("whsec_other" if forge == "wrong_secret" else SECRET, "checkout.session.completed",
                                      obj, timestamp=int(time.time()) - 3600 if forge == "stale" else None)
    if forge == "tampered":
        payload = payload.replace(b"cs_test_forged", b"cs_test_FORGED")
    headers = {"Content-Type": "application/json"} | ({} if forge == "missing" else {"Stripe-Signature": signature})
    result = sapi.call("POST", "/webhooks/stripe", body=payload, headers=headers)
    assert result.status_code == 400 and result.headers["content-type"] == "application/problem+json"
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM stripe_events WHERE payload::text ILIKE :p"),
                            {"p": f"%cs_test_forged_{forge}%"}).scalar() == 0


def test_a_lost_webhook_is_recovered_by_the_reconcile_job(sapi, stripe_api, stripe_services, owner_ws, engine):
    owner, ws = owner_ws
    checkout = _checkout(sapi, owner, ws, amount=1200)
    stripe_api.pay(checkout["stripeSessionId"])
    stripe_services.stripe.reconcile(after=timedelta(0))
    stripe_services.stripe.reconcile(after=timedelta(0))
    assert _topups(engine, owner.default_account_id) == [1200]
    assert sapi.call("GET", f"/workspaces/{ws['id']}/billing/checkouts/{checkout['id']}", owner.key).json["status"] == "completed"


def test_an_expired_session_closes_the_checkout_without_credit(sapi, stripe_api, stripe_services, queue, owner_ws, engine):
    owner, ws = owner_ws
    checkout = _checkout(sapi, owner, ws)
    _deliver(sapi, "checkout.session.expired", stripe_api.expire(checkout["stripeSessionId"]))
    assert _apply_queued(stripe_services, queue) == ["expired"]
    assert sapi.call("GET", f"/workspaces/{ws['id']}/billing/checkouts/{checkout['id']}", owner.key).json["status"] == "expired"
    assert _topups(engine, owner.default_account_id) == []


def test_a_refund_debits_once_and_partial_refunds_add_up(sapi, stripe_api, stripe_services, queue, owner_ws, engine):
    owner, ws = owner_ws
    checkout = _checkout(sapi, owner, ws, amount=2000)
    paid = stripe_api.pay(checkout["stripeSessionId"])
    _deliver(sapi, "checkout.session.completed", paid)
    charge = charge_refunded(paid["payment_intent"], 500)
    for _ in range(3):
        _deliver(sapi, "charge.refunded", charge)
    _deliver(sapi, "charge.refunded", charge | {"amount_refunded": 2000})
    _apply_queued(stripe_services, queue)
    assert _topups(engine, owner.default_account_id) == [2000, -500, -1500]
    _assert_sound(stripe_services, owner.default_account_id)


def test_a_refund_may_take_the_balance_below_zero(sapi, stripe_api, stripe_services, queue, owner_ws, engine):
    owner, ws = owner_ws
    checkout = _checkout(sapi, owner, ws, amount=5000)
    paid = stripe_api.pay(checkout["stripeSessionId"])
    _deliver(sapi, "checkout.session.completed", paid)
    _apply_queued(stripe_services, queue)
    with engine.begin() as conn:  # spend it all
        from domain.store import ledger
        ledger.post(conn, owner.default_account_id, -6000, kind="usage", key=f"spend:{owner.id}")
    _deliver(sapi, "charge.refunded", charge_refunded(paid["payment_intent"], 5000))
    assert _apply_queued(stripe_services, queue) == ["refunded_below_zero"]
    assert _balance(sapi, owner, ws) == -5000


def test_a_paid_amount_that_differs_from_the_checkout_is_recorded_and_not_credited(sapi, stripe_api, stripe_services, queue, owner_ws, engine):
    owner, ws = owner_ws
    checkout = _checkout(sapi, owner, ws, amount=1000)
    _deliver(sapi, "checkout.session.completed", stripe_api.pay(checkout["stripeSessionId"], amount_total=1))
    assert _apply_queued(stripe_services, queue) == ["amount_mismatch"]
    read = sapi.call("GET", f"/workspaces/{ws['id']}/billing/checkouts/{checkout['id']}", owner.key).json
    assert read["status"] == "failed" and read["failureReason"].startswith("amount_mismatch")
    assert _topups(engine, owner.default_account_id) == []


@pytest.mark.parametrize("fault,status", [("error", 502), ("timeout", 503)])
def test_stripe_failing_at_creation_answers_a_problem_and_leaves_no_pending_checkout(sapi, stripe_api, owner_ws, fault, status):
    owner, ws = owner_ws
    if fault == "error":
        stripe_api.fail_creates = 2  # the SDK retries once with the same idempotency key
    else:
        stripe_api.delay_seconds, stripe_api.delay_creates = 3, 2
    result = sapi.call("POST", f"/workspaces/{ws['id']}/billing/checkout", owner.key,
                       json={"amountCents": 800, "successUrl": "https://a.example/s", "cancelUrl": "https://a.example/c"})
    assert result.status_code == status and result.headers["content-type"] == "application/problem+json"
    listed = sapi.call("GET", f"/workspaces/{ws['id']}/billing/checkouts", owner.key).json["data"]
    assert [c["status"] for c in listed] == ["failed"]
    stripe_api.fail_creates = 0


def test_one_stripe_error_is_retried_by_the_sdk_with_the_same_idempotency_key(sapi, stripe_api, owner_ws):
    owner, ws = owner_ws
    stripe_api.fail_creates = 1
    checkout = _checkout(sapi, owner, ws)
    assert checkout["status"] == "pending" and checkout["stripeSessionId"] in stripe_api.sessions


def test_the_idempotency_key_replays_the_same_checkout(sapi, stripe_api, owner_ws):
    owner, ws = owner_ws
    first = _checkout(sapi, owner, ws, **{"Idempotency-Key": "topup-1"})
    again = _checkout(sapi, owner, ws, **{"Idempotency-Key": "topup-1"})
    assert again == first
    assert len(sapi.call("GET", f"/workspaces/{ws['id']}/billing/checkouts", owner.key).json["data"]) == 1


@pytest.mark.parametrize("body,field", [
    ({"amountCents": 49, "successUrl": "https://a.example/s", "cancelUrl": "https://a.example/c"}, "amountCents"),
    ({"amountCents": 1_000_001, "successUrl": "https://a.example/s", "cancelUrl": "https://a.example/c"}, "amountCents"),
    ({"amountCents": 100.0, "successUrl": "https://a.example/s", "cancelUrl": "https://a.example/c"}, "amountCents"),
    ({"amountCents": 100, "successUrl": "/relative", "cancelUrl": "https://a.example/c"}, "successUrl"),
    ({"amountCents": 100, "successUrl": "https://a.example/s", "cancelUrl": "ftp://a.example/c"}, "cancelUrl"),
])
def test_invalid_checkout_bodies_are_unprocessable_and_reach_no_stripe(sapi, stripe_api, owner_ws, body, field):
    owner, ws = owner_ws
    before = len(stripe_api.sessions)
    result = sapi.call("POST", f"/workspaces/{ws['id']}/billing/checkout", owner.key, json=body)
    assert result.status_code == 422 and [e["field"] for e in result.json["errors"]] == [field]
    assert len(stripe_api.sessions) == before


def test_members_cannot_create_checkouts_and_strangers_cannot_see_them(sapi, owner_ws, stripe_api):
    owner, ws = owner_ws
    member, stranger = sapi.new_user("Mia"), sapi.new_user("Eve")
    sapi.add_member(owner, ws["id"], member)
    body = {"amountCents": 100, "successUrl": "https://a.example/s", "cancelUrl": "https://a.example/c"}
    assert sapi.call("POST", f"/workspaces/{ws['id']}/billing/checkout", member.key, json=body).status_code == 403
    assert sapi.call("POST", f"/workspaces/{ws['id']}/billing/checkout", stranger.key, json=body).status_code == 404
    checkout = _checkout(sapi, owner, ws)
    assert sapi.call("GET", f"/workspaces/{ws['id']}/billing/checkouts/{checkout['id']}", member.key).status_code == 200
    assert sapi.call("GET", f"/workspaces/{ws['id']}/billing/checkouts/{checkout['id']}", stranger.key).status_code == 404
