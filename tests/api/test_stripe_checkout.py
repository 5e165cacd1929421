"""Stripe Checkout top-ups through the real SDK against a loopback stand-in, on real PostgreSQL."""
import json
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from falcon import testing
from sqlalchemy import text

from api.app import create_app
from domain.names import Task
from domain.providers.stripe_gateway import StripeGateway
from domain.services.context import Config, Context
from domain.services.registry import Services
from domain.store.uow import UnitOfWork
from tests.api.checks import assert_problem
from tests.factories import OPERATOR_TOKEN, Api, post
from tests.standins.stripe_api import charge_refunded, signed_event, stripe_signature
from worker.cli import main as billing

SECRET = "whsec_test_secret"


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
    """Apply the queued events (a message's task applies every stored event, its own first); each one's outcome,
    in the order they were queued."""
    events = [kwargs["event_id"] for name, kwargs in queue.sent if name == "payments.apply_stripe_event"]
    queue.sent.clear()
    for event_id in events:
        services.stripe.apply_event(event_id)
    return _outcomes(services, events)


def _outcomes(services: Services, events: list[str]) -> list:
    with services.ctx.uow() as uow:
        found = dict(uow.conn.execute(text("SELECT id, outcome FROM stripe_events WHERE id = ANY(:ids)"),
                                      {"ids": events}).all())
    return [found.get(event_id) for event_id in events]


def _balance(api: Api, owner, ws) -> int:
    return api.call("GET", f"/workspaces/{ws['id']}/billing/balance", owner.key).json["balanceCents"]


def _topups(engine, account_id: str) -> list[int]:
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT amount_cents FROM ledger_entries WHERE billing_account_id = :a "
                                      "AND kind IN ('stripe_topup', 'refund') ORDER BY id"), {"a": account_id}).scalars())


def _assert_sound(services: Services, account_id: str) -> None:
    assert [p for p in services.audit.problems(stuck_after=timedelta(hours=1)) if account_id in p] == []


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
    stripe_services.stripe.apply_event(events[0])  # its task applies the other stored event too
    assert sorted(_outcomes(stripe_services, events)) == ["already_credited", "credited"]
    assert queue.sent == []  # the tier was stored with the credit: no message for it
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
    post(stripe_services, owner.default_account_id, -6000, key=f"spend:{owner.id}")  # spend it all
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


@pytest.mark.parametrize("fault,status", [("error", 502), ("timeout", 503)])
def test_a_stripe_failure_under_an_idempotency_key_is_not_recorded_and_the_retry_gets_one_session(
        sapi, stripe_api, owner_ws, engine, fault, status):
    """The first attempt's session may exist at Stripe (a timeout after Stripe made it): the retry asks
    again under the same Stripe idempotency key and gets that one; nothing is replayed from the failure."""
    owner, ws = owner_ws
    if fault == "error":
        stripe_api.fail_creates = 2
    else:
        stripe_api.delay_seconds, stripe_api.delay_creates = 3, 2  # Stripe makes it, the answer comes late
    body = {"amountCents": 900, "successUrl": "https://a.example/s", "cancelUrl": "https://a.example/c"}
    path, key = f"/workspaces/{ws['id']}/billing/checkout", {"Idempotency-Key": f"topup-{fault}"}
    failed = sapi.call("POST", path, owner.key, json=body, headers=key)
    assert failed.status_code == status, failed.text
    stripe_api.fail_creates = 0
    retried = sapi.call("POST", path, owner.key, json=body, headers=key)
    assert retried.status_code == 201 and "idempotent-replayed" not in retried.headers, retried.text
    assert retried.json["status"] == "pending" and retried.json["url"]
    made = [s for s in stripe_api.sessions.values() if s["client_reference_id"] == retried.json["id"]]
    assert [s["id"] for s in made] == [retried.json["stripeSessionId"]]
    assert sapi.call("POST", path, owner.key, json=body, headers=key).json == retried.json
    listed = sapi.call("GET", f"/workspaces/{ws['id']}/billing/checkouts", owner.key).json["data"]
    assert [c["id"] for c in listed] == [retried.json["id"]]


def test_a_keyed_checkout_whose_session_was_never_made_waits_for_its_retry_before_it_is_closed(
        sapi, stripe_api, stripe_services, owner_ws, engine):
    owner, ws = owner_ws
    stripe_api.fail_creates = 2
    body = {"amountCents": 700, "successUrl": "https://a.example/s", "cancelUrl": "https://a.example/c"}
    failed = sapi.call("POST", f"/workspaces/{ws['id']}/billing/checkout", owner.key, json=body,
                       headers={"Idempotency-Key": "never-retried"})
    assert failed.status_code == 502
    stripe_api.fail_creates = 0
    stripe_services.stripe.reconcile(after=timedelta(0))
    listed = sapi.call("GET", f"/workspaces/{ws['id']}/billing/checkouts", owner.key).json["data"]
    assert [c["status"] for c in listed] == ["pending"]  # within the key's window a retry may resume it
    with engine.begin() as conn:
        conn.execute(text("UPDATE checkouts SET created_at = created_at - interval '25 hours' WHERE id = :id"),
                     {"id": listed[0]["id"]})
    stripe_services.stripe.reconcile(after=timedelta(0))
    listed = sapi.call("GET", f"/workspaces/{ws['id']}/billing/checkouts", owner.key).json["data"]
    assert [c["status"] for c in listed] == ["failed"]


def test_a_checkout_key_past_its_window_creates_a_new_checkout_never_the_old_one(sapi, stripe_api, owner_ws, engine):
    owner, ws = owner_ws
    first = _checkout(sapi, owner, ws, amount=1500, **{"Idempotency-Key": "monthly"})
    with engine.begin() as conn:
        conn.execute(text("UPDATE idempotency_keys SET created_at = created_at - interval '25 hours'"))
    second = _checkout(sapi, owner, ws, amount=2500, **{"Idempotency-Key": "monthly"})
    assert second["id"] != first["id"] and second["amountCents"] == 2500
    assert second["stripeSessionId"] != first["stripeSessionId"]


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


def _paid_checkout(api: Api, stripe_api, services: Services, queue, owner, ws, amount: int) -> tuple[dict, str]:
    """A checkout of `amount` cents, paid and credited: it and its payment intent."""
    checkout = _checkout(api, owner, ws, amount=amount)
    paid = stripe_api.pay(checkout["stripeSessionId"])
    _deliver(api, "checkout.session.completed", paid)
    assert _apply_queued(services, queue) == ["credited"]
    return checkout, paid["payment_intent"]


def _notices(services: Services, checkout_id: str) -> list[str]:
    return [line for line in services.audit.notices() if checkout_id in line]


def _excess_notice(checkout: dict, cents: int, charges: list[str]) -> str:
    return (f"notice: checkout {checkout['id']} (account {checkout['billingAccountId']}): Stripe refunded {cents} "
            f"cents more than it credited (charges {', '.join(sorted(charges))}); not debited")


def test_a_refund_larger_than_the_checkout_debits_what_it_credited_and_the_audit_notices_the_rest(
        sapi, stripe_api, stripe_services, queue, owner_ws, engine, monkeypatch, capsys):
    owner, ws = owner_ws
    checkout, intent = _paid_checkout(sapi, stripe_api, stripe_services, queue, owner, ws, 500)
    charge = charge_refunded(intent, 5000)
    _deliver(sapi, "charge.refunded", charge)
    assert _apply_queued(stripe_services, queue) == ["refund_capped"]
    assert _topups(engine, owner.default_account_id) == [500, -500]
    assert _notices(stripe_services, checkout["id"]) == [_excess_notice(checkout, 4500, [charge["id"]])]
    _assert_sound(stripe_services, owner.default_account_id)

    monkeypatch.setattr("worker.container._built", {os.getpid(): stripe_services})
    exit_code = billing(["audit", "--stuck-after", "86400"])
    printed = capsys.readouterr().out.splitlines()
    problems = stripe_services.audit.problems(stuck_after=timedelta(days=1))
    assert _excess_notice(checkout, 4500, [charge["id"]]) in printed
    assert (exit_code, printed[-1]) == ((1, f"audit: {len(problems)} problem(s)") if problems else (0, "audit: ok"))


def test_two_charges_of_one_payment_refund_together_no_more_than_the_checkout_however_often_they_arrive(
        sapi, stripe_api, stripe_services, queue, owner_ws, engine):
    owner, ws = owner_ws
    checkout, intent = _paid_checkout(sapi, stripe_api, stripe_services, queue, owner, ws, 500)
    first, second = charge_refunded(intent, 400), charge_refunded(intent, 300)
    _deliver(sapi, "charge.refunded", first)
    payload, signature = signed_event(SECRET, "charge.refunded", second)
    for _ in range(3):  # Stripe redelivering the same event
        sapi.call("POST", "/webhooks/stripe", body=payload, headers={"Stripe-Signature": signature})
    assert _apply_queued(stripe_services, queue) == ["refunded", "refund_capped"]
    for charge in (first, second):  # the same refunds again, in new events
        _deliver(sapi, "charge.refunded", charge)
    assert _apply_queued(stripe_services, queue) == ["already_refunded", "already_refunded"]
    assert _topups(engine, owner.default_account_id) == [500, -400, -100]
    assert _notices(stripe_services, checkout["id"]) == [_excess_notice(checkout, 200, [first["id"], second["id"]])]
    _assert_sound(stripe_services, owner.default_account_id)


def test_partial_refunds_add_up_to_exactly_the_checkout_and_not_one_cent_more(sapi, stripe_api, stripe_services,
                                                                             queue, owner_ws, engine):
    owner, ws = owner_ws
    checkout, intent = _paid_checkout(sapi, stripe_api, stripe_services, queue, owner, ws, 1000)
    charge = charge_refunded(intent, 0)
    for refunded in (300, 700, 700, 1000):
        _deliver(sapi, "charge.refunded", charge | {"amount_refunded": refunded})
    assert _apply_queued(stripe_services, queue) == ["refunded", "refunded", "already_refunded", "refunded"]
    assert _topups(engine, owner.default_account_id) == [1000, -300, -400, -300]
    assert _notices(stripe_services, checkout["id"]) == []
    another = charge_refunded(intent, 1)
    _deliver(sapi, "charge.refunded", another)
    _deliver(sapi, "charge.refunded", charge | {"amount_refunded": 700})  # late and out of order
    assert _apply_queued(stripe_services, queue) == ["refund_capped", "already_refunded"]
    assert _topups(engine, owner.default_account_id) == [1000, -300, -400, -300]
    assert _notices(stripe_services, checkout["id"]) == [_excess_notice(checkout, 1, [charge["id"], another["id"]])]


def test_refund_events_of_one_checkout_applied_concurrently_never_debit_more_than_it_credited(
        sapi, stripe_api, stripe_services, queue, owner_ws, engine):
    owner, ws = owner_ws
    checkout, intent = _paid_checkout(sapi, stripe_api, stripe_services, queue, owner, ws, 500)
    charges = [charge_refunded(intent, 400) for _ in range(3)]
    for charge in charges * 2:
        _deliver(sapi, "charge.refunded", charge)
    events = [kwargs["event_id"] for _, kwargs in queue.sent]
    with ThreadPoolExecutor(len(events)) as pool:
        list(pool.map(stripe_services.stripe.apply_event, events))
    outcomes = _outcomes(stripe_services, events)
    assert sorted(outcomes).count("already_refunded") == 3, outcomes
    assert sum(_topups(engine, owner.default_account_id)) == 0
    assert _notices(stripe_services, checkout["id"]) == [_excess_notice(checkout, 700, [c["id"] for c in charges])]


def test_a_refund_of_a_checkout_that_never_credited_debits_nothing(sapi, stripe_api, stripe_services, queue, owner_ws,
                                                                   engine):
    owner, ws = owner_ws
    checkout = _checkout(sapi, owner, ws, amount=900)
    _deliver(sapi, "checkout.session.completed", stripe_api.pay(checkout["stripeSessionId"], paid=False))
    assert _apply_queued(stripe_services, queue) == ["awaiting_payment"]
    charge = charge_refunded(stripe_api.sessions[checkout["stripeSessionId"]]["payment_intent"], 900)
    _deliver(sapi, "charge.refunded", charge)
    assert _apply_queued(stripe_services, queue) == ["refund_capped"]
    assert _topups(engine, owner.default_account_id) == []
    assert _notices(stripe_services, checkout["id"]) == [_excess_notice(checkout, 900, [charge["id"]])]


def _event_body(**fields) -> dict:
    """A well-formed charge.refunded event with these fields changed (to ... for left out)."""
    body = {"id": "evt_malformed", "object": "event", "type": "charge.refunded",
            "data": {"object": charge_refunded("pi_malformed", 100)}}
    return {k: v for k, v in (body | fields).items() if v is not ...}


def _with_object(**fields) -> bytes:
    return json.dumps(_event_body(data={"object": charge_refunded("pi_malformed", 100) | fields})).encode()


def _session_event(**fields) -> bytes:
    session = {"id": "cs_test_malformed", "object": "checkout.session", "amount_total": 100, "currency": "usd",
               "client_reference_id": None, "payment_intent": None, "status": "complete", "payment_status": "paid"}
    return json.dumps(_event_body(type="checkout.session.completed", data={"object": session | fields})).encode()


MALFORMED = {
    "null": b"null",
    "an array": json.dumps([_event_body()]).encode(),
    "a string": b'"evt_1"',
    "not json": b'{"id": "evt_1",',
    "nested ten thousand levels deep": b"[" * 10_000 + b"]" * 10_000,
    "an object nested a hundred levels deep": _with_object(metadata=json.loads('{"a":' * 100 + "1" + "}" * 100)),
    "no data": json.dumps(_event_body(data=...)).encode(),
    "data a string": json.dumps(_event_body(data="charge")).encode(),
    "data without object": json.dumps(_event_body(data={})).encode(),
    "data.object a list": json.dumps(_event_body(data={"object": [charge_refunded("pi_x", 1)]})).encode(),
    "data.object null": json.dumps(_event_body(data={"object": None})).encode(),
    "no id": json.dumps(_event_body(id=...)).encode(),
    "an integer id": json.dumps(_event_body(id=12345)).encode(),
    "an empty id": json.dumps(_event_body(id="")).encode(),
    "a NUL in the id": json.dumps(_event_body(id="evt_\u0000x")).encode(),
    "a newline in the id": json.dumps(_event_body(id="evt_\nx")).encode(),
    "an id of 256 characters": json.dumps(_event_body(id="e" * 256)).encode(),
    "no type": json.dumps(_event_body(type=...)).encode(),
    "an integer type": json.dumps(_event_body(type=7)).encode(),
    "a NUL inside the object": _with_object(description="a\u0000b"),
    "a lone surrogate inside the object": _with_object(description="\ud800"),
    "NaN inside the object": _with_object(amount=float("nan")),
    "amount_refunded a string": _with_object(amount_refunded="5000"),
    "amount_refunded a float": _with_object(amount_refunded=500.0),
    "amount_refunded a boolean": _with_object(amount_refunded=True),
    "amount_refunded negative": _with_object(amount_refunded=-1),
    "amount_refunded null": _with_object(amount_refunded=None),
    "a charge id that is a number": _with_object(id=42),
    "payment_intent an object": _with_object(payment_intent={"id": "pi_1"}),
    "amount_total a string": _session_event(amount_total="100"),
    "client_reference_id a number": _session_event(client_reference_id=5),
    "a session id that is null": _session_event(id=None),
}


@pytest.mark.parametrize("payload", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_correctly_signed_body_that_is_not_a_well_formed_event_is_400_and_never_stored_or_queued(
        sapi, engine, queue, payload):
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT count(*) FROM stripe_events")).scalar()
    headers = {"Stripe-Signature": stripe_signature(SECRET, payload), "Content-Type": "application/json"}
    result = sapi.call("POST", "/webhooks/stripe", body=payload, headers=headers)
    assert_problem(result, 400)
    assert "signature" not in result.json["detail"].lower(), result.json  # says what is wrong with the event
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM stripe_events")).scalar() == stored
    assert queue.sent == []


def test_the_well_formed_event_the_malformed_ones_are_made_from_is_accepted(sapi, queue):
    payload = json.dumps(_event_body(id="evt_well_formed_" + os.urandom(6).hex())).encode()
    result = sapi.call("POST", "/webhooks/stripe", body=payload,
                       headers={"Stripe-Signature": stripe_signature(SECRET, payload)})
    assert result.status_code == 200, result.text
    assert [name for name, _ in queue.sent] == ["payments.apply_stripe_event"]


def test_a_malformed_event_stored_before_events_were_checked_is_closed_not_retried(stripe_services, engine):
    event_id = "evt_stored_malformed_" + os.urandom(6).hex()
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO stripe_events (id, type, payload) VALUES (:id, 'charge.refunded', :p)"),
                     {"id": event_id, "p": json.dumps({"object": {"id": "ch_1", "amount_refunded": "lots"}})})
    assert stripe_services.stripe.apply_event(event_id) == "malformed"
    assert stripe_services.stripe.apply_event(event_id) is None


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_stripe_unreachable_answers_503_naming_stripe_and_no_address(engine, queue, owner_ws):
    owner, ws = owner_ws
    port = _closed_port()
    gateway = StripeGateway("sk_test_standin", SECRET, f"http://127.0.0.1:{port}", timeout_seconds=2)
    services = Services(Context(uow=lambda: UnitOfWork(engine), enqueue=queue, config=Config(), stripe=gateway))
    unreachable = Api(testing.TestClient(create_app(services, OPERATOR_TOKEN, {})))
    result = unreachable.call("POST", f"/workspaces/{ws['id']}/billing/checkout", owner.key,
                              json={"amountCents": 800, "successUrl": "https://a.example/s",
                                    "cancelUrl": "https://a.example/c"})
    assert_problem(result, 503)
    detail = result.json["detail"]
    assert detail == "Stripe did not answer (connection failed)"
    assert not any(leak in detail for leak in ("127.0.0.1", str(port), "HTTPConnectionPool", "Errno"))


def test_one_message_applies_every_stored_event_in_a_batch_and_stores_the_tiers(sapi, stripe_api, stripe_services,
                                                                              queue, engine):
    owners = [sapi.new_user() for _ in range(4)]
    paid = []
    for owner in owners:
        checkout = _checkout(sapi, owner, sapi.new_workspace(owner), amount=600)
        paid.append(stripe_api.pay(checkout["stripeSessionId"]))
    queue.sent.clear()
    for session in paid:
        _deliver(sapi, "checkout.session.completed", session)
        _deliver(sapi, "checkout.session.async_payment_succeeded", session)
    events = [kwargs["event_id"] for _, kwargs in queue.sent]
    queue.sent.clear()

    stripe_services.stripe.apply_event(events[-1])  # one message: its task applies all eight
    assert sorted(_outcomes(stripe_services, events)) == ["already_credited"] * 4 + ["credited"] * 4
    assert queue.sent == []
    with engine.connect() as conn:
        tiers = conn.execute(text("SELECT billing_account_id, paid_cents FROM account_tiers WHERE billing_account_id "
                                  "= ANY(:a)"), {"a": [o.default_account_id for o in owners]}).all()
    assert sorted(paid for _, paid in tiers) == [600] * 4  # each tier computed with its credit
    for owner in owners:
        assert _topups(engine, owner.default_account_id) == [600]
    assert [stripe_services.stripe.apply_event(e) for e in events] == [None] * 8  # their own messages: nothing


def test_a_batch_passes_over_an_event_whose_checkout_is_not_visible_yet_and_applies_the_rest(
        sapi, stripe_api, stripe_services, queue, owner_ws, engine):
    owner, ws = owner_ws
    ghost = "chk_" + "cd" * 16
    early = {"id": "cs_test_early_batch", "object": "checkout.session", "status": "complete",
             "payment_status": "paid", "amount_total": 300, "currency": "usd", "client_reference_id": ghost,
             "payment_intent": "pi_early_batch"}
    checkout = _checkout(sapi, owner, ws, amount=700)
    queue.sent.clear()
    _deliver(sapi, "checkout.session.completed", early)
    _deliver(sapi, "checkout.session.completed", stripe_api.pay(checkout["stripeSessionId"]))
    early_event, paid_event = [kwargs["event_id"] for _, kwargs in queue.sent]
    queue.sent.clear()

    stripe_services.stripe.apply_event(paid_event)  # applied; the drain passes the early one over
    assert _outcomes(stripe_services, [early_event, paid_event]) == [None, "credited"]
    assert queue.sent == []  # its own message (or the reconcile job) comes back to it
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO checkouts (id, provider, workspace_id, billing_account_id, amount_cents, "
                          "created_by) VALUES (:id, 'stripe', :ws, :a, 300, :u)"),
                     {"id": ghost, "ws": ws["id"], "a": owner.default_account_id, "u": owner.id})
    stripe_services.stripe.apply_event(early_event)
    assert _outcomes(stripe_services, [early_event]) == ["credited"]
    assert sorted(_topups(engine, owner.default_account_id)) == [300, 700]


def test_a_batch_passes_over_events_whose_account_another_transaction_holds_and_sends_one_message_for_them(
        sapi, stripe_api, stripe_services, queue, engine):
    held_owner, free_owner = sapi.new_user(), sapi.new_user()
    sessions = []
    for owner in (held_owner, free_owner, held_owner):
        checkout = _checkout(sapi, owner, sapi.new_workspace(owner), amount=400)
        sessions.append(stripe_api.pay(checkout["stripeSessionId"]))
    queue.sent.clear()
    for session in sessions:
        _deliver(sapi, "checkout.session.completed", session)
    events = [kwargs["event_id"] for _, kwargs in queue.sent]
    queue.sent.clear()
    with engine.connect() as other:  # another worker's batch, say, holding the first owner's account
        other.execute(text("SELECT 1 FROM billing_accounts WHERE id = :a FOR UPDATE"),
                      {"a": held_owner.default_account_id})
        started = time.monotonic()
        stripe_services.stripe.apply_event(events[1])  # never waits on the held account
        assert time.monotonic() - started < 2
        assert _outcomes(stripe_services, events) == [None, "credited", None]
        assert [(name, kw["event_id"] in (events[0], events[2])) for name, kw in queue.sent] == [
            (Task.APPLY_STRIPE_EVENT, True)]  # one message for the two passed over
        other.rollback()
    stripe_services.stripe.apply_event(queue.sent[0][1]["event_id"])
    assert _outcomes(stripe_services, events) == ["credited"] * 3
    assert sorted(_topups(engine, held_owner.default_account_id)) == [400, 400]


def test_a_batch_credits_paid_sessions_together_and_leaves_mismatches_and_unpaid_ones_to_go_one_by_one(
        sapi, stripe_api, stripe_services, queue, engine):
    owner = sapi.new_user()
    ws = sapi.new_workspace(owner)
    paid, mismatched, unpaid = (_checkout(sapi, owner, ws, amount=500) for _ in range(3))
    queue.sent.clear()
    paid_session = stripe_api.pay(paid["stripeSessionId"])
    _deliver(sapi, "checkout.session.completed", paid_session)
    _deliver(sapi, "checkout.session.completed", stripe_api.pay(mismatched["stripeSessionId"], amount_total=499))
    _deliver(sapi, "checkout.session.completed", stripe_api.pay(unpaid["stripeSessionId"], paid=False))
    _deliver(sapi, "checkout.session.async_payment_succeeded", paid_session)
    events = [kwargs["event_id"] for _, kwargs in queue.sent]
    queue.sent.clear()

    stripe_services.stripe.apply_event("evt_none")  # a wake-up: the drain takes the four in one batch
    assert _outcomes(stripe_services, events) == ["credited", "amount_mismatch", "awaiting_payment",
                                                  "already_credited"]
    statuses = {c["id"]: sapi.call("GET", f"/workspaces/{ws['id']}/billing/checkouts/{c['id']}", owner.key)
                .json["status"] for c in (paid, mismatched, unpaid)}
    assert statuses == {paid["id"]: "completed", mismatched["id"]: "failed", unpaid["id"]: "pending"}
    assert _topups(engine, owner.default_account_id) == [500]
    _assert_sound(stripe_services, owner.default_account_id)
