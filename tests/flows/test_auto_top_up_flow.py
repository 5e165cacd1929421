"""Auto top-up as deployed: the served API, a real worker and Redis, Stripe's SDK against the stand-in, a webhook
receiver on loopback. A card saved by a checkout, one charge for twenty concurrent debits below the threshold, one
credit (and one auto_top_up.succeeded) for a payment_intent.succeeded delivered ten times at once, three declines
(authentication_required among them) each sending auto_top_up.failed and turning it off, maxPerDay."""
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import text

from tests.auto_top_ups import (TOP_UP_EVENTS, checkout_saving_the_card, credits_of, intents_for, pay_and_report,
                                settings, top_ups, turn_on, usage)
from tests.factories import prometheus_samples
from tests.processes import Stack, assert_sound, wait_for_operations, wait_until
from tests.standins.stripe_api import signed_event
from tests.standins.webhook_receiver import WebhookReceiver

SECRET = "whsec_auto_top_up_flow"


@pytest.fixture(scope="module")
def stack(database_url, tmp_path_factory, stripe_api):
    stack = Stack(database_url, tmp_path_factory.mktemp("auto-top-up-stack"))
    stack.env.update(STRIPE_API_KEY="sk_test_flow", STRIPE_WEBHOOK_SECRET=SECRET, STRIPE_API_BASE=stripe_api.url,
                     BILLING_WEBHOOKS_ALLOW_PRIVATE="1")
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


def subscribe(stack, owner, ws, receiver: WebhookReceiver) -> str:
    """A webhook endpoint of the workspace for the auto top-up events, at the receiver; its secret."""
    created = stack.api.call("POST", f"/workspaces/{ws['id']}/webhook-endpoints", owner.key,
                             json={"url": receiver.url, "events": list(TOP_UP_EVENTS)})
    assert created.status_code == 201, created.text
    return created.json["secret"]


def card_saved(stack, stripe_api, card=("visa", "4242")):
    """An owner and a workspace whose default account has `card` saved by a 500-cent checkout (balance 1500)."""
    api = stack.api
    owner = api.new_user()
    ws = api.new_workspace(owner)
    checkout = checkout_saving_the_card(api, owner, ws)
    pay_and_report(api, SECRET, stripe_api, checkout, card)
    wait_until(lambda: settings(api, owner.key, ws)["autoTopUp"]["paymentMethod"], 30, "the card to be saved")
    return owner, ws


def debit(stack, engine, ws, cents: int) -> None:
    posted = stack.api.operator("POST", f"/workspaces/{ws['id']}/billing/usage", json=usage(0, cents))
    assert posted.status_code == 202, posted.text
    assert wait_for_operations(engine, [posted.json["id"]]) == {posted.json["id"]: "succeeded"}


def top_up_settled(engine, account_id: str, count: int) -> list[dict]:
    """Wait until the account has `count` top-ups, none pending (charged, or failed)."""
    return wait_until(lambda: (lambda found: found if len(found) == count and all(
        t["status"] != "pending" for t in found) else None)(top_ups(engine, account_id)), 30, f"{count} top-up(s)")


def report(stack, stripe_api, intent_id: str, times: int = 1) -> None:
    """Stripe's event about the PaymentIntent (one event id), delivered `times` times at once."""
    payload, signature = signed_event(SECRET, *stripe_api.intent_event(intent_id))
    headers = {"Stripe-Signature": signature, "Content-Type": "application/json"}
    with ThreadPoolExecutor(times) as pool:
        answers = list(pool.map(lambda _: stack.api.call("POST", "/webhooks/stripe", body=payload, headers=headers),
                                range(times)))
    assert [a.status_code for a in answers] == [200] * times


def applied(engine, intent_id: str) -> list[str]:
    """The outcomes of the stored Stripe events about the PaymentIntent, sorted (None: not applied yet)."""
    with engine.connect() as conn:
        found = conn.execute(text("SELECT outcome FROM stripe_events WHERE payload->'object'->>'id' = :pi"),
                             {"pi": intent_id}).scalars().all()
    return sorted(found, key=str)


def test_a_checkout_that_saves_its_payment_method_shows_the_card_in_the_billing_settings(stack, stripe_api, services):
    owner, ws = card_saved(stack, stripe_api, card=("mastercard", "5454"))
    assert settings(stack.api, owner.key, ws)["autoTopUp"]["paymentMethod"] == {"brand": "mastercard", "last4": "5454"}
    assert_sound(services, ws["defaultBillingAccountId"])


def test_twenty_concurrent_debits_below_the_threshold_charge_once_and_ten_deliveries_credit_once(
        stack, stripe_api, services, engine, receiver):
    owner, ws = card_saved(stack, stripe_api)
    account = ws["defaultBillingAccountId"]
    secret = subscribe(stack, owner, ws, receiver)
    before = top_up_metrics(stack)
    turn_on(stack.api, owner, ws, threshold=1495, amount=1000)
    with ThreadPoolExecutor(20) as pool:
        posted = list(pool.map(lambda n: stack.api.operator("POST", f"/workspaces/{ws['id']}/billing/usage",
                                                            json=usage(n, 10)), range(20)))
    assert [p.status_code for p in posted] == [202] * 20
    ids = [p.json["id"] for p in posted]
    assert set(wait_for_operations(engine, ids).values()) == {"succeeded"}
    [top_up] = top_up_settled(engine, account, 1)
    [intent] = intents_for(stripe_api, account)
    assert (top_up["status"], top_up["payment_intent_id"], intent["amount"]) == ("processing", intent["id"], 1000)

    report(stack, stripe_api, intent["id"], times=10)
    wait_until(lambda: top_ups(engine, account)[0]["status"] == "succeeded", 30, "the top-up to be credited")
    for _ in range(3):  # Stripe sends it again, under new event ids
        report(stack, stripe_api, intent["id"])
    wait_until(lambda: applied(engine, intent["id"]) == ["already_credited"] * 3 + ["auto_top_up_credited"], 30,
               "the events about the PaymentIntent to be applied")
    assert [amount for _, amount in credits_of(engine, account)] == [500, 1000]
    balance = stack.api.call("GET", f"/workspaces/{ws['id']}/billing/balance", owner.key).json["balanceCents"]
    assert balance == 1500 - 20 * 10 + 1000
    assert len(intents_for(stripe_api, account)) == 1
    [sent] = receiver.wait_for(1, workspace_id=ws["id"])
    assert sent.verified(secret)["type"] == "auto_top_up.succeeded"
    assert {k: sent.event["data"][k] for k in ("id", "amountCents", "status", "paymentIntentId")} == {
        "id": top_up["id"], "amountCents": 1000, "status": "succeeded", "paymentIntentId": intent["id"]}
    after = top_up_metrics(stack)
    assert {status: after[status] - before[status] for status in after} == {
        "pending": 0, "processing": 0, "succeeded": 1, "failed": 0}
    assert_sound(services, account)


def top_up_metrics(stack) -> dict[str, float]:
    """The API's billing_auto_top_ups gauge (every top-up in the database, by status)."""
    samples = prometheus_samples(stack.api.call("GET", "/metrics").text)
    return {key.split('"')[1]: value for key, value in samples.items() if key.startswith("billing_auto_top_ups{")}


def test_three_failures_in_a_row_each_send_auto_top_up_failed_and_turn_auto_top_up_off(
        stack, stripe_api, services, engine, receiver):
    owner, ws = card_saved(stack, stripe_api)
    account = ws["defaultBillingAccountId"]
    secret = subscribe(stack, owner, ws, receiver)
    turn_on(stack.api, owner, ws, threshold=10_000)
    stripe_api.script_intents("card_declined", "authentication_required", "card_declined")
    for n in range(1, 4):
        debit(stack, engine, ws, 10)
        assert [t["status"] for t in top_up_settled(engine, account, n)] == ["failed"] * n
    assert settings(stack.api, owner.key, ws)["autoTopUp"]["enabled"] is False
    debit(stack, engine, ws, 10)
    assert len(top_ups(engine, account)) == 3 and len(intents_for(stripe_api, account)) == 3
    failed = sorted((r.verified(secret) for r in receiver.wait_for(3, workspace_id=ws["id"])),
                    key=lambda e: e["data"]["failuresInARow"])
    assert [(e["type"], e["data"]["failureCode"], e["data"]["failuresInARow"]) for e in failed] == [
        ("auto_top_up.failed", "card_declined", 1), ("auto_top_up.failed", "authentication_required", 2),
        ("auto_top_up.failed", "card_declined", 3)]
    assert [amount for _, amount in credits_of(engine, account)] == [500]
    assert_sound(services, account)


def test_a_day_starts_no_more_top_ups_than_max_per_day(stack, stripe_api, services, engine):
    owner, ws = card_saved(stack, stripe_api)
    account = ws["defaultBillingAccountId"]
    turn_on(stack.api, owner, ws, threshold=100_000, amount=500, max_per_day=2)
    for n in range(1, 5):
        debit(stack, engine, ws, 10)
        started = top_up_settled(engine, account, min(n, 2))
        if n <= 2:
            report(stack, stripe_api, started[-1]["payment_intent_id"])
            wait_until(lambda: top_ups(engine, account)[n - 1]["status"] == "succeeded", 30, "the credit")
    assert len(top_ups(engine, account)) == 2 and len(intents_for(stripe_api, account)) == 2
    assert [amount for _, amount in credits_of(engine, account)] == [500, 500, 500]
    assert_sound(services, account)
