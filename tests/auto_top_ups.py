"""Shared by the auto top-up tests (api, flows, faults): a card saved through a checkout, settings, a webhook endpoint
that listens, Stripe's events about the PaymentIntents the service made, and what the database holds of them."""
import uuid

from sqlalchemy import text

from tests.factories import Api, UserKey
from tests.standins.stripe_api import StripeStandIn, signed_event

CHECKOUT = {"successUrl": "https://app.example/ok", "cancelUrl": "https://app.example/cancel"}
TOP_UP_EVENTS = ("auto_top_up.succeeded", "auto_top_up.failed")


def checkout_saving_the_card(api: Api, owner: UserKey, ws: dict, amount: int = 500) -> dict:
    created = api.call("POST", f"/workspaces/{ws['id']}/billing/checkout", owner.key,
                       json={"amountCents": amount, "savePaymentMethod": True, **CHECKOUT})
    assert created.status_code == 201, created.text
    return created.json


def deliver(api: Api, secret: str, event_type: str, obj: dict, **kwargs):
    payload, signature = signed_event(secret, event_type, obj, **kwargs)
    delivered = api.call("POST", "/webhooks/stripe", body=payload,
                         headers={"Stripe-Signature": signature, "Content-Type": "application/json"})
    assert delivered.status_code == 200, delivered.text
    return delivered


def pay_and_report(api: Api, secret: str, stripe_api: StripeStandIn, checkout: dict,
                   card: tuple[str, str] = ("visa", "4242")) -> dict:
    """The payer pays the checkout's session with `card`; Stripe reports it (checkout.session.completed)."""
    session = stripe_api.pay(checkout["stripeSessionId"], card=card)
    deliver(api, secret, "checkout.session.completed", session)
    return session


def settings(api: Api, key: str, ws: dict) -> dict:
    return api.call("GET", f"/workspaces/{ws['id']}/billing/settings", key).json


def turn_on(api: Api, owner: UserKey, ws: dict, *, threshold: int, amount: int = 500, max_per_day: int = 3) -> dict:
    put = api.call("PUT", f"/workspaces/{ws['id']}/billing/settings", owner.key, json={"autoTopUp": {
        "enabled": True, "thresholdCents": threshold, "amountCents": amount, "maxPerDay": max_per_day}})
    assert put.status_code == 200, put.text
    return put.json


def usage(n: int, cents: int, tag: str | None = None) -> dict:
    """A usage body of one event (n names it)."""
    return {"events": [{"eventId": f"{tag or uuid.uuid4().hex}-{n}", "metric": "api.calls", "quantity": 1,
                        "amountCents": cents}]}


def listen(engine, workspace_id: str, events=TOP_UP_EVENTS) -> str:
    """A webhook endpoint of the workspace subscribed to `events`, so the events are kept (the outbox writes only
    the events some endpoint listens to); its id."""
    endpoint_id = f"we_{uuid.uuid4().hex}"
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO webhook_endpoints (id, workspace_id, url, events, secret, created_by) "
                          "VALUES (:id, :ws, 'https://receiver.example/hooks', :events, :secret, 'test')"),
                     {"id": endpoint_id, "ws": workspace_id, "events": list(events),
                      "secret": f"whsec_{uuid.uuid4().hex}"})
    return endpoint_id


def events_of(engine, workspace_id: str, types=TOP_UP_EVENTS) -> list[dict]:
    """The workspace's webhook events of these types, oldest first: {type, data}."""
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT type, data FROM webhook_events WHERE workspace_id = :ws "
                                 "AND type = ANY(:types) ORDER BY created_at, id"),
                            {"ws": workspace_id, "types": list(types)}).mappings().all()
    return [dict(row) for row in rows]


def top_ups(engine, account_id: str) -> list[dict]:
    """The account's auto top-ups, oldest first."""
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM auto_top_ups WHERE billing_account_id = :a ORDER BY created_at"),
                            {"a": account_id}).mappings().all()
    return [dict(row) for row in rows]


def credits_of(engine, account_id: str) -> list[tuple[str, int]]:
    """The account's stripe_topup entries: (idempotency key, cents), oldest first."""
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text(
            "SELECT idempotency_key, amount_cents FROM ledger_entries WHERE billing_account_id = :a "
            "AND kind = 'stripe_topup' ORDER BY id"), {"a": account_id})]


def intents_for(stripe_api: StripeStandIn, account_id: str) -> list[dict]:
    """The off-session PaymentIntents the service asked Stripe for on the account's behalf, oldest first."""
    return [i for i in stripe_api.created_intents() if i["metadata"].get("billing_account_id") == account_id]
