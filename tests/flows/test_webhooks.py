"""Outbound webhooks as deployed: the served API, a real worker and Redis, Stripe and an x402 facilitator behind
stand-ins, and a receiver in the test process on loopback. Every event type the service emits reaches it signed
with the endpoint's secret; retries keep their webhook-id; a receiver down for a while gets its events once back."""
from datetime import UTC, datetime, timedelta

import pytest
from x402.http.utils import decode_payment_required_header

from domain.names import Task
from tests.processes import X402_NETWORK, X402_PAY_TO, Stack, wait_for_operations, wait_until
from tests.standins.stripe_api import signed_event
from tests.standins.webhook_receiver import Answer, WebhookReceiver
from tests.standins.x402_facilitator import Wallet

STRIPE_SECRET = "whsec_flow_webhooks"
# Retries 1,000 times sooner than in production (5 ms, 0.3 s, 1.8 s, 7.2 s...), and a receiver has 1 s.
WEBHOOKS = {"BILLING_WEBHOOKS_ALLOW_PRIVATE": "1", "BILLING_WEBHOOK_RETRY_SCALE": "0.001",
            "BILLING_WEBHOOK_TIMEOUT_SECONDS": "1"}
EMITTED = ["balance.low", "balance.depleted", "transaction.created", "checkout.completed", "checkout.failed",
           "operation.failed", "grant.expiring", "spend_limit.alert"]


@pytest.fixture(scope="module")
def stack(database_url, tmp_path_factory, stripe_api, facilitator):
    stack = Stack(database_url, tmp_path_factory.mktemp("webhooks-stack"))
    stack.env.update(WEBHOOKS, STRIPE_API_KEY="sk_test_flow", STRIPE_WEBHOOK_SECRET=STRIPE_SECRET,
                     STRIPE_API_BASE=stripe_api.url, X402_FACILITATOR_URL=facilitator.url, X402_PAY_TO=X402_PAY_TO,
                     X402_NETWORK=X402_NETWORK)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


def _subscribed(api, receiver: WebhookReceiver, events: list[str]):
    owner = api.new_user()
    ws = api.new_workspace(owner)["id"]
    created = api.call("POST", f"/workspaces/{ws}/webhook-endpoints", owner.key,
                       json={"url": receiver.url, "events": events})
    assert created.status_code == 201, created.text
    return owner, ws, created.json


def _deliveries(api, owner, ws: str, endpoint_id: str) -> list[dict]:
    return api.call("GET", f"/workspaces/{ws}/webhook-endpoints/{endpoint_id}/deliveries", owner.key).json["data"]


def _usage(api, ws: str, cents: int) -> str:
    event = {"eventId": f"e-{datetime.now(UTC).timestamp()}-{cents}", "metric": "tokens", "quantity": 1,
             "amountCents": cents}
    return api.operator("POST", f"/workspaces/{ws}/billing/usage", json={"events": [event]}).json["id"]


def _stripe_checkout(api, owner, ws: str, stripe_api, event_type: str, **paid) -> None:
    created = api.call("POST", f"/workspaces/{ws}/billing/checkout", owner.key, json={
        "amountCents": 500, "successUrl": "https://app.example/ok", "cancelUrl": "https://app.example/no"}).json
    payload, signature = signed_event(STRIPE_SECRET, event_type, stripe_api.pay(created["stripeSessionId"], **paid))
    answer = api.call("POST", "/webhooks/stripe", body=payload,
                      headers={"Stripe-Signature": signature, "Content-Type": "application/json"})
    assert answer.status_code == 200, answer.text


def _x402_drained(api, owner, ws: str, facilitator, engine) -> None:
    """An x402 payment whose payer spent the funds before settlement: the checkout and its operation fail."""
    path, wallet = f"/workspaces/{ws}/billing/checkout/x402", Wallet()
    facilitator.fund(X402_NETWORK, wallet.address, 10_000_000)
    unpaid = api.call("POST", path, owner.key, json={"amountCents": 600})
    header = wallet.pay(decode_payment_required_header(unpaid.headers["PAYMENT-REQUIRED"]))
    facilitator.script("drained")
    paid = api.call("POST", path, owner.key, json={"amountCents": 600}, headers={"PAYMENT-SIGNATURE": header})
    assert paid.status_code == 202, paid.text
    assert wait_for_operations(engine, [paid.json["id"]], timeout=30) == {paid.json["id"]: "failed"}


def test_every_event_type_reaches_the_receiver_signed_with_the_endpoints_secret(
        stack, receiver, stripe_api, facilitator, engine):
    api = stack.api
    owner, ws, endpoint = _subscribed(api, receiver, EMITTED)
    settings = api.call("PUT", f"/workspaces/{ws}/billing/settings", owner.key, json={"lowBalanceCents": 500})
    assert settings.status_code == 200
    assert api.call("PUT", f"/workspaces/{ws}/billing/spend-limit", owner.key,
                    json={"monthlyLimitCents": 2000, "alertPercents": [25]}).status_code == 200
    api.operator("POST", f"/workspaces/{ws}/billing/credits", json={"amountCents": 100})  # 1000 + 100
    receiver.wait_for(1, type="transaction.created")
    wait_for_operations(engine, [_usage(api, ws, 700)])  # 400: below 500; 700 of 2000 spent: past 25 %
    wait_for_operations(engine, [_usage(api, ws, 400)])  # 0: depleted
    _stripe_checkout(api, owner, ws, stripe_api, "checkout.session.completed")
    _stripe_checkout(api, owner, ws, stripe_api, "checkout.session.async_payment_failed", paid=False)
    _x402_drained(api, owner, ws, facilitator, engine)
    expires = (datetime.now(UTC) + timedelta(days=3)).isoformat()
    api.operator("POST", f"/workspaces/{ws}/billing/credits", json={"amountCents": 50, "expiresAt": expires})
    wait_until(lambda: stack.send_task(Task.NOTICE_EXPIRING_GRANTS) and receiver.received("grant.expiring"), 30,
               "grant.expiring", every=1)

    for kind in EMITTED:
        receiver.wait_for(1, type=kind)
    requests = receiver.received()
    assert {r.event["workspaceId"] for r in requests} == {ws}
    assert all(r.verified(endpoint["secret"])["id"] == r.webhook_id for r in requests)
    assert len(receiver.received("checkout.failed")) == 2  # Stripe's and x402's
    low = receiver.received("balance.low")[0].event["data"]
    assert (low["previousBalanceCents"], low["balanceCents"], low["lowBalanceCents"]) == (1100, 400, 500)
    alert = receiver.received("spend_limit.alert")[0].event["data"]
    assert (alert["percent"], alert["limitCents"], alert["spentCents"]) == (25, 2000, 700)
    failed = receiver.received("operation.failed")[0].event["data"]
    assert (failed["kind"], failed["status"]) == ("x402_settle", "failed")
    wait_until(lambda: all(d["status"] == "succeeded" for d in _deliveries(api, owner, ws, endpoint["id"])), 30,
               "every delivery to be recorded succeeded")


def test_retries_after_500s_and_a_timeout_keep_the_webhook_id_and_the_body(stack, receiver):
    api = stack.api
    owner, ws, endpoint = _subscribed(api, receiver, ["transaction.created"])
    receiver.answer(Answer(500), Answer(200, delay=1.5), Answer(502))
    api.operator("POST", f"/workspaces/{ws}/billing/credits", json={"amountCents": 100})
    requests = receiver.wait_for(4)
    assert len({r.webhook_id for r in requests}) == 1 and len({r.body for r in requests}) == 1
    assert all(r.verifies(endpoint["secret"]) for r in requests)
    done = wait_until(lambda: (lambda d: d if d[0]["status"] == "succeeded" else None)(
        _deliveries(api, owner, ws, endpoint["id"])), 30, "the delivery to succeed")
    assert (done[0]["attempts"], done[0]["lastStatusCode"], done[0]["eventId"]) == (4, 200, requests[0].webhook_id)


def test_a_receiver_that_is_down_gets_its_events_once_it_is_back(stack, receiver):
    api = stack.api
    owner, ws, endpoint = _subscribed(api, receiver, ["transaction.created"])
    receiver.stop()
    api.operator("POST", f"/workspaces/{ws}/billing/credits", json={"amountCents": 100})
    failing = wait_until(lambda: (lambda d: d if d and d[0]["attempts"] >= 3 else None)(
        _deliveries(api, owner, ws, endpoint["id"])), 30, "three failed attempts")
    assert failing[0]["status"] == "pending" and failing[0]["lastError"].startswith("connection failed")
    assert failing[0]["nextAttemptAt"] is not None
    receiver.start()
    [request] = receiver.wait_for(1)
    assert request.verified(endpoint["secret"])["id"] == failing[0]["eventId"]
    wait_until(lambda: _deliveries(api, owner, ws, endpoint["id"])[0]["status"] == "succeeded", 30, "success recorded")
