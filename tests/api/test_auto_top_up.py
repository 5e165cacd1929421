"""Auto top-up on real PostgreSQL, the Stripe stand-in reached through the real SDK, the queued tasks run in this
process in the order a worker would: a card saved by a checkout, the settings and their validation, a debit below
the threshold charging once, payment_intent.succeeded crediting once, declines turning it off, maxPerDay, and a
top-up whose message was lost sent by the relay."""
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import text

from domain.models import OPERATOR_CALLER as OPERATOR
from domain.names import Task
from domain.services.registry import Services
from tests.api.checks import assert_problem
# The Stripe checkout tests' fixtures: services and an app whose gateway is the stand-in, an owner's workspace.
from tests.api.test_stripe_checkout import SECRET, owner_ws, sapi, stripe_services  # noqa: F401
from tests.auto_top_ups import (checkout_saving_the_card, credits_of, deliver, events_of, intents_for, listen,
                                pay_and_report, settings, top_ups, turn_on, usage)
from tests.standins.stripe_api import signed_event

RECONCILE_AFTER = timedelta(minutes=5)


def run_queued(services: Services, queue) -> list[str]:
    """Run what was queued, and what that queues, as a worker would; the outcomes of the payment tasks."""
    outcomes = []
    while queue.sent:
        name, kwargs = queue.sent.pop(0)
        if name == Task.APPLY_OPERATION:
            services.operations.apply(**kwargs)
        elif name == Task.APPLY_STRIPE_EVENT:  # applies its event, and drains the others stored
            services.stripe.apply_event(**kwargs)
            outcomes.append(stripe_outcome(services, kwargs["event_id"]))
        elif name == Task.SAVE_CARD:
            outcomes.append(services.auto_top_ups.save_card(**kwargs))
        elif name == Task.CHARGE_AUTO_TOP_UP:
            outcomes.append(services.auto_top_ups.charge(**kwargs))
    return outcomes


def stripe_outcome(services: Services, event_id: str) -> str | None:
    """What applying the stored Stripe event came to (by its own task or another's drain)."""
    with services.ctx.uow() as uow:
        return uow.conn.execute(text("SELECT outcome FROM stripe_events WHERE id = :id"), {"id": event_id}).scalar()


def saved_card(sapi, services, queue, stripe_api, owner, ws, card=("visa", "4242")) -> dict:
    checkout = checkout_saving_the_card(sapi, owner, ws)
    pay_and_report(sapi, SECRET, stripe_api, checkout, card)
    assert run_queued(services, queue) == ["credited", "card_saved"]
    return checkout


@pytest.fixture
def carded(sapi, stripe_services, queue, stripe_api, owner_ws):
    """The owner, the workspace and its default account, a visa card saved by a 500-cent checkout (balance 1500)."""
    owner, ws = owner_ws
    saved_card(sapi, stripe_services, queue, stripe_api, owner, ws)
    return owner, ws, ws["defaultBillingAccountId"]


def debit(sapi, services, queue, ws, cents: int) -> list[str]:
    posted = sapi.operator("POST", f"/workspaces/{ws['id']}/billing/usage", json=usage(0, cents))
    assert posted.status_code == 202, posted.text
    return run_queued(services, queue)


def report_intents(sapi, stripe_api, account_id: str, times: int = 1) -> None:
    """Stripe's event about each PaymentIntent made for the account, delivered `times` times (one event id)."""
    for intent in intents_for(stripe_api, account_id):
        payload, signature = signed_event(SECRET, *stripe_api.intent_event(intent["id"]))
        for _ in range(times):
            sapi.call("POST", "/webhooks/stripe", body=payload,
                      headers={"Stripe-Signature": signature, "Content-Type": "application/json"})


def assert_sound(services, account_id: str) -> None:
    assert [p for p in services.audit.problems(stuck_after=timedelta(hours=1)) if account_id in p] == []


def test_a_checkout_that_saves_the_payment_method_gives_the_account_a_customer_and_its_card(
        sapi, stripe_services, queue, stripe_api, owner_ws):
    owner, ws = owner_ws
    assert settings(sapi, owner.key, ws)["autoTopUp"]["paymentMethod"] is None
    checkout = saved_card(sapi, stripe_services, queue, stripe_api, owner, ws, card=("mastercard", "4444"))
    session = stripe_api.sessions[checkout["stripeSessionId"]]
    customer = stripe_api.customers[session["customer"]]
    assert customer["metadata"] == {"billing_account_id": ws["defaultBillingAccountId"]}
    intent = stripe_api.intents[session["payment_intent"]]
    assert intent["setup_future_usage"] == "off_session"
    assert stripe_api.payment_methods[intent["payment_method"]]["customer"] == customer["id"]
    assert settings(sapi, owner.key, ws)["autoTopUp"]["paymentMethod"] == {"brand": "mastercard", "last4": "4444"}

    later = saved_card(sapi, stripe_services, queue, stripe_api, owner, ws, card=("amex", "0005"))
    assert stripe_api.sessions[later["stripeSessionId"]]["customer"] == customer["id"]  # one customer per account
    assert settings(sapi, owner.key, ws)["autoTopUp"]["paymentMethod"] == {"brand": "amex", "last4": "0005"}
    assert settings_customer(stripe_api, ws["defaultBillingAccountId"]) == customer["id"]
    assert_sound(stripe_services, ws["defaultBillingAccountId"])


def test_a_checkout_that_does_not_ask_saves_no_card(sapi, stripe_services, queue, stripe_api, owner_ws):
    owner, ws = owner_ws
    created = sapi.call("POST", f"/workspaces/{ws['id']}/billing/checkout", owner.key,
                        json={"amountCents": 700, "successUrl": "https://app.example/ok",
                              "cancelUrl": "https://app.example/cancel"}).json
    assert stripe_api.sessions[created["stripeSessionId"]]["customer"] is None
    pay_and_report(sapi, SECRET, stripe_api, created)
    assert run_queued(stripe_services, queue) == ["credited"]
    assert stripe_services.auto_top_ups.save_card(created["id"]) == "nothing_to_save"
    assert settings(sapi, owner.key, ws)["autoTopUp"]["paymentMethod"] is None
    assert_sound(stripe_services, ws["defaultBillingAccountId"])


def test_auto_top_up_settings_are_kept_left_unchanged_when_left_out_and_removed_with_null(sapi, owner_ws):
    owner, ws = owner_ws
    path = f"/workspaces/{ws['id']}/billing/settings"
    put = sapi.call("PUT", path, owner.key, json={"autoTopUp": {"enabled": True, "thresholdCents": 300,
                                                                "amountCents": 1500}})
    assert put.json["autoTopUp"] == {"enabled": True, "thresholdCents": 300, "amountCents": 1500, "maxPerDay": 3,
                                     "paymentMethod": None}
    assert sapi.call("PUT", path, owner.key, json={"lowBalanceCents": 50}).json["autoTopUp"] == put.json["autoTopUp"]
    assert settings(sapi, owner.key, ws) == {"workspaceId": ws["id"], "lowBalanceCents": 50,
                                             "autoTopUp": put.json["autoTopUp"]}
    removed = sapi.call("PUT", path, owner.key, json={"autoTopUp": None}).json
    assert removed["autoTopUp"] == {"enabled": False, "thresholdCents": None, "amountCents": None, "maxPerDay": 3,
                                    "paymentMethod": None}
    assert removed["lowBalanceCents"] == 50


@pytest.mark.parametrize("auto_top_up, field", [
    ({"enabled": True, "thresholdCents": 100, "amountCents": 499}, "autoTopUp.amountCents"),
    ({"enabled": True, "thresholdCents": 100, "amountCents": 1_000_001}, "autoTopUp.amountCents"),
    ({"enabled": True, "thresholdCents": 100, "amountCents": 500.5}, "autoTopUp.amountCents"),
    ({"enabled": True, "thresholdCents": 100, "amountCents": "500"}, "autoTopUp.amountCents"),
    ({"enabled": True, "thresholdCents": 100}, "autoTopUp.amountCents"),
    ({"enabled": True, "thresholdCents": -1, "amountCents": 500}, "autoTopUp.thresholdCents"),
    ({"enabled": True, "thresholdCents": 100_000_001, "amountCents": 500}, "autoTopUp.thresholdCents"),
    ({"enabled": True, "amountCents": 500}, "autoTopUp.thresholdCents"),
    ({"enabled": "true", "thresholdCents": 100, "amountCents": 500}, "autoTopUp.enabled"),
    ({"enabled": 1, "thresholdCents": 100, "amountCents": 500}, "autoTopUp.enabled"),
    ({"thresholdCents": 100, "amountCents": 500}, "autoTopUp.enabled"),
    ({"enabled": True, "thresholdCents": 100, "amountCents": 500, "maxPerDay": 0}, "autoTopUp.maxPerDay"),
    ({"enabled": True, "thresholdCents": 100, "amountCents": 500, "maxPerDay": 21}, "autoTopUp.maxPerDay"),
    ({"enabled": True, "thresholdCents": 100, "amountCents": 500, "maxPerDay": True}, "autoTopUp.maxPerDay"),
    ({"enabled": True, "thresholdCents": 100, "amountCents": 500, "everyHour": True}, "autoTopUp.everyHour"),
    ("on", "autoTopUp"),
])
def test_bad_auto_top_up_settings_are_refused_with_422_naming_the_field_and_change_nothing(sapi, owner_ws,
                                                                                           auto_top_up, field):
    owner, ws = owner_ws
    turn_on(sapi, owner, ws, threshold=200, amount=800)
    before = settings(sapi, owner.key, ws)
    body = assert_problem(sapi.call("PUT", f"/workspaces/{ws['id']}/billing/settings", owner.key,
                                    json={"lowBalanceCents": 10, "autoTopUp": auto_top_up}), 422)
    assert field in [e["field"] for e in body["errors"]], body["errors"]
    assert settings(sapi, owner.key, ws) == before


def test_a_member_reads_the_settings_but_only_the_owner_or_an_admin_changes_them(sapi, owner_ws):
    owner, ws = owner_ws
    member, admin = sapi.new_user("Mem"), sapi.new_user("Adm")
    sapi.add_member(owner, ws["id"], member)
    sapi.add_member(owner, ws["id"], admin, role="admin")
    body = {"autoTopUp": {"enabled": True, "thresholdCents": 100, "amountCents": 500}}
    path = f"/workspaces/{ws['id']}/billing/settings"
    assert_problem(sapi.call("PUT", path, member.key, json=body), 403)
    assert settings(sapi, member.key, ws)["autoTopUp"]["enabled"] is False
    assert sapi.call("PUT", path, admin.key, json=body).status_code == 200
    assert settings(sapi, member.key, ws)["autoTopUp"]["enabled"] is True
    stranger = sapi.new_user("Str")
    assert_problem(sapi.call("GET", path, stranger.key), 404)
    assert_problem(sapi.call("PUT", path, stranger.key, json=body), 404)


def test_a_debit_below_the_threshold_charges_the_saved_card_once_and_its_success_credits_once(
        sapi, stripe_services, queue, stripe_api, carded, engine):
    owner, ws, account = carded  # 1000 intro + 500
    listen(engine, ws["id"])
    turn_on(sapi, owner, ws, threshold=1000, amount=2000)
    assert debit(sapi, stripe_services, queue, ws, 400) == []  # 1100: above the threshold
    assert debit(sapi, stripe_services, queue, ws, 200) == ["auto_top_up_charged"]  # 900
    assert debit(sapi, stripe_services, queue, ws, 100) == []  # 800: one in flight already
    [intent] = intents_for(stripe_api, account)
    [top_up] = top_ups(engine, account)
    with engine.connect() as conn:
        card = conn.execute(text("SELECT payment_method_id FROM stripe_customers WHERE billing_account_id = :a"),
                            {"a": account}).scalar()
    assert (intent["amount"], intent["currency"], intent["customer"], intent["payment_method"]) == (
        2000, "usd", settings_customer(stripe_api, account), card)
    assert intent["metadata"] == {"auto_top_up_id": top_up["id"], "billing_account_id": account,
                                  "workspace_id": ws["id"]}
    assert (top_up["status"], top_up["payment_intent_id"]) == ("processing", intent["id"])
    assert stripe_api.answered[f"auto-top-up-{account}-{top_up['trigger_entry_id']}"][1]["id"] == intent["id"]
    with engine.connect() as conn:
        crossing = conn.execute(text("SELECT amount_cents, balance_after_cents FROM ledger_entries "
                                     "WHERE billing_account_id = :a AND id = :id"),
                                {"a": account, "id": top_up["trigger_entry_id"]}).one()
    assert tuple(crossing) == (-200, 900)  # the debit that crossed names the top-up's key

    payload, signature = signed_event(SECRET, *stripe_api.intent_event(intent["id"]))
    headers = {"Stripe-Signature": signature, "Content-Type": "application/json"}
    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda _: sapi.call("POST", "/webhooks/stripe", body=payload, headers=headers),
                                range(10)))
    assert [a.status_code for a in answers] == [200] * 10 and sum(not a.json["duplicate"] for a in answers) == 1
    assert run_queued(stripe_services, queue) == ["auto_top_up_credited"]
    report_intents(sapi, stripe_api, account)  # Stripe sends it again, under another event id
    assert run_queued(stripe_services, queue) == ["already_credited"]
    assert credits_of(engine, account) == [(f"stripe_checkout:{top_ups_checkout(engine, account)}", 500),
                                           (f"auto_top_up:{top_up['id']}", 2000)]
    balance = sapi.call("GET", f"/workspaces/{ws['id']}/billing/balance", owner.key).json
    assert (balance["balanceCents"], balance["paidCents"]) == (2800, 2500)
    [event] = events_of(engine, ws["id"])
    assert event["type"] == "auto_top_up.succeeded"
    assert {k: event["data"][k] for k in ("id", "amountCents", "status", "paymentIntentId")} == {
        "id": top_up["id"], "amountCents": 2000, "status": "succeeded", "paymentIntentId": intent["id"]}
    assert event["data"]["transactionId"]
    assert_sound(stripe_services, account)


def settings_customer(stripe_api, account_id: str) -> str:
    [customer] = [c["id"] for c in stripe_api.customers.values() if c["metadata"]["billing_account_id"] == account_id]
    return customer


def top_ups_checkout(engine, account_id: str) -> str:
    with engine.connect() as conn:
        return conn.execute(text("SELECT id FROM checkouts WHERE billing_account_id = :a"), {"a": account_id}).scalar()


def test_three_declines_in_a_row_each_emit_auto_top_up_failed_and_turn_it_off(
        sapi, stripe_services, queue, stripe_api, carded, engine):
    owner, ws, account = carded
    listen(engine, ws["id"])
    turn_on(sapi, owner, ws, threshold=5000)
    stripe_api.script_intents("card_declined", "authentication_required", "card_declined")
    for _ in range(3):
        assert debit(sapi, stripe_services, queue, ws, 10) == ["auto_top_up_failed"]
    assert settings(sapi, owner.key, ws)["autoTopUp"]["enabled"] is False
    assert debit(sapi, stripe_services, queue, ws, 10) == []  # off: nothing more is charged
    assert len(intents_for(stripe_api, account)) == 3
    report_intents(sapi, stripe_api, account)  # Stripe's payment_intent.payment_failed for each changes nothing
    assert run_queued(stripe_services, queue) == ["already_failed"] * 3

    failed = events_of(engine, ws["id"])
    assert [e["type"] for e in failed] == ["auto_top_up.failed"] * 3
    assert [(e["data"]["failureCode"], e["data"]["failuresInARow"], e["data"]["autoTopUpEnabled"]) for e in failed] == [
        ("card_declined", 1, True), ("authentication_required", 2, True), ("card_declined", 3, False)]
    assert [t["status"] for t in top_ups(engine, account)] == ["failed"] * 3
    assert credits_of(engine, account) == [(f"stripe_checkout:{top_ups_checkout(engine, account)}", 500)]
    assert_sound(stripe_services, account)


def test_authentication_required_is_a_failure_and_a_success_starts_the_count_afresh(
        sapi, stripe_services, queue, stripe_api, carded, engine):
    owner, ws, account = carded
    listen(engine, ws["id"])
    turn_on(sapi, owner, ws, threshold=100_000, max_per_day=20)
    stripe_api.script_intents("authentication_required", "authentication_required", "succeeded",
                              "authentication_required", "authentication_required")
    for _ in range(2):
        assert debit(sapi, stripe_services, queue, ws, 10) == ["auto_top_up_failed"]
    assert debit(sapi, stripe_services, queue, ws, 10) == ["auto_top_up_charged"]
    report_intents(sapi, stripe_api, account)
    assert sorted(run_queued(stripe_services, queue)) == ["already_failed", "already_failed", "auto_top_up_credited"]
    for _ in range(2):
        assert debit(sapi, stripe_services, queue, ws, 10) == ["auto_top_up_failed"]
    assert settings(sapi, owner.key, ws)["autoTopUp"]["enabled"] is True  # 2 in a row since the success
    assert [(e["type"], e["data"].get("failuresInARow")) for e in events_of(engine, ws["id"])] == [
        ("auto_top_up.failed", 1), ("auto_top_up.failed", 2), ("auto_top_up.succeeded", None),
        ("auto_top_up.failed", 1), ("auto_top_up.failed", 2)]
    assert_sound(stripe_services, account)


def test_no_more_than_max_per_day_top_ups_start_in_a_utc_day(sapi, stripe_services, queue, stripe_api, carded,
                                                              engine):
    owner, ws, account = carded
    turn_on(sapi, owner, ws, threshold=100_000, amount=500, max_per_day=2)
    for expected in (["auto_top_up_charged"], ["auto_top_up_charged"], [], []):
        assert debit(sapi, stripe_services, queue, ws, 10) == expected
        report_intents(sapi, stripe_api, account)
        run_queued(stripe_services, queue)
    assert [t["status"] for t in top_ups(engine, account)] == ["succeeded", "succeeded"]
    assert len(intents_for(stripe_api, account)) == 2
    with engine.begin() as conn:  # as if they had started yesterday (UTC)
        conn.execute(text("UPDATE auto_top_ups SET created_at = created_at - interval '1 day' "
                          "WHERE billing_account_id = :a"), {"a": account})
    assert debit(sapi, stripe_services, queue, ws, 10) == ["auto_top_up_charged"]
    report_intents(sapi, stripe_api, account)
    run_queued(stripe_services, queue)
    assert [amount for _, amount in credits_of(engine, account)] == [500, 500, 500, 500]
    assert_sound(stripe_services, account)


def test_a_top_up_whose_charge_was_never_sent_is_sent_by_the_relay_and_its_lost_event_found_by_asking_stripe(
        sapi, stripe_services, queue, stripe_api, carded, engine):
    owner, ws, account = carded
    turn_on(sapi, owner, ws, threshold=2000)
    sapi.operator("POST", f"/workspaces/{ws['id']}/billing/usage", json=usage(0, 10))
    queue.up = False  # the broker refuses the charge's message
    run_queued(stripe_services, queue)
    queue.up = True
    [top_up] = top_ups(engine, account)
    assert top_up["status"] == "pending" and intents_for(stripe_api, account) == []
    assert stripe_services.auto_top_ups.relay(reconcile_after=RECONCILE_AFTER)["sent"] == 0  # sent just now: left
    with engine.begin() as conn:
        conn.execute(text("UPDATE auto_top_ups SET updated_at = updated_at - interval '1 minute' "
                          "WHERE billing_account_id = :a"), {"a": account})
    assert stripe_services.auto_top_ups.relay(reconcile_after=RECONCILE_AFTER) == {"sent": 1, "cards": 0,
                                                                                    "reconciled": 0}
    assert run_queued(stripe_services, queue) == ["auto_top_up_charged"]
    assert stripe_services.auto_top_ups.charge(account, top_up["id"]) == "already_processing"  # a redelivery

    # payment_intent.succeeded never comes: after STRIPE_RECONCILE_AFTER the relay asks Stripe
    with engine.begin() as conn:
        conn.execute(text("UPDATE auto_top_ups SET updated_at = updated_at - interval '10 minutes' "
                          "WHERE billing_account_id = :a"), {"a": account})
    assert stripe_services.auto_top_ups.relay(reconcile_after=RECONCILE_AFTER)["reconciled"] == 1
    assert [amount for _, amount in credits_of(engine, account)] == [500, 500]
    assert top_ups(engine, account)[0]["status"] == "succeeded"
    report_intents(sapi, stripe_api, account)  # the event, late
    assert run_queued(stripe_services, queue) == ["already_credited"]
    assert_sound(stripe_services, account)


def test_a_card_save_whose_message_was_lost_is_asked_again_by_the_relay(sapi, stripe_services, queue, stripe_api,
                                                                       owner_ws, engine):
    owner, ws = owner_ws
    checkout = checkout_saving_the_card(sapi, owner, ws)
    pay_and_report(sapi, SECRET, stripe_api, checkout, ("visa", "1881"))
    queue.up = False
    event_id = queue.sent.pop()[1]["event_id"]
    assert stripe_services.stripe.apply_event(event_id) == "credited"  # its save_card message is lost
    queue.up = True
    assert stripe_services.auto_top_ups.relay(reconcile_after=RECONCILE_AFTER)["cards"] == 0  # completed just now
    with engine.begin() as conn:
        conn.execute(text("UPDATE checkouts SET updated_at = updated_at - interval '2 minutes' WHERE id = :id"),
                     {"id": checkout["id"]})
    assert stripe_services.auto_top_ups.relay(reconcile_after=RECONCILE_AFTER)["cards"] == 1
    assert stripe_services.auto_top_ups.relay(reconcile_after=RECONCILE_AFTER)["cards"] == 0  # sent just now
    assert run_queued(stripe_services, queue) == ["card_saved"]
    with engine.begin() as conn:
        conn.execute(text("UPDATE checkouts SET updated_at = updated_at - interval '2 minutes' WHERE id = :id"),
                     {"id": checkout["id"]})
    assert stripe_services.auto_top_ups.relay(reconcile_after=RECONCILE_AFTER)["cards"] == 0  # saved
    assert settings(sapi, owner.key, ws)["autoTopUp"]["paymentMethod"] == {"brand": "visa", "last4": "1881"}
    assert_sound(stripe_services, ws["defaultBillingAccountId"])


def test_a_payment_intent_event_of_a_checkout_is_left_to_the_checkout_events(sapi, stripe_services, queue,
                                                                             stripe_api, owner_ws, engine):
    owner, ws = owner_ws
    checkout = checkout_saving_the_card(sapi, owner, ws)
    session = pay_and_report(sapi, SECRET, stripe_api, checkout)
    deliver(sapi, SECRET, *stripe_api.intent_event(session["payment_intent"]))
    assert sorted(run_queued(stripe_services, queue)) == ["card_saved", "credited", "ignored"]
    assert [amount for _, amount in credits_of(engine, ws["defaultBillingAccountId"])] == [500]
    assert_sound(stripe_services, ws["defaultBillingAccountId"])


def test_a_payment_intent_event_with_a_malformed_object_is_refused_and_not_stored(sapi, stripe_services, queue):
    for obj in ({"id": "pi_1", "amount": "500", "status": "succeeded"}, {"id": "pi_1", "amount": 500, "metadata": []},
                {"amount": 500}):
        payload, signature = signed_event(SECRET, "payment_intent.succeeded", obj)
        answer = sapi.call("POST", "/webhooks/stripe", body=payload,
                           headers={"Stripe-Signature": signature, "Content-Type": "application/json"})
        assert_problem(answer, 400)
    assert queue.sent == []


def test_a_hold_captured_below_the_threshold_starts_a_top_up_too(sapi, stripe_services, queue, stripe_api, carded,
                                                                  engine):
    owner, ws, account = carded  # 1500
    turn_on(sapi, owner, ws, threshold=1000)
    hold = sapi.operator("POST", f"/workspaces/{ws['id']}/billing/holds", json={"amountCents": 800}).json
    assert run_queued(stripe_services, queue) == []  # a hold moves no money
    captured = sapi.operator("POST", f"/workspaces/{ws['id']}/billing/holds/{hold['id']}/capture",
                             json={"amountCents": 600})
    assert captured.status_code == 202
    assert run_queued(stripe_services, queue) == ["auto_top_up_charged"]  # 900 left
    [top_up] = top_ups(engine, account)
    with engine.connect() as conn:
        key = conn.execute(text("SELECT idempotency_key FROM ledger_entries WHERE billing_account_id = :a "
                                "AND id = :id"), {"a": account, "id": top_up["trigger_entry_id"]}).scalar()
    assert key == f"hold:{hold['id']}"
    report_intents(sapi, stripe_api, account)
    assert run_queued(stripe_services, queue) == ["auto_top_up_credited"]
    assert_sound(stripe_services, account)


def test_a_debit_through_a_workspace_whose_default_account_is_another_starts_no_top_up(
        sapi, stripe_services, queue, stripe_api, carded, engine):
    owner, ws, account = carded
    turn_on(sapi, owner, ws, threshold=100_000)
    posted = sapi.operator("POST", f"/workspaces/{ws['id']}/billing/usage", json=usage(0, 10)).json
    other = sapi.call("POST", f"/workspaces/{ws['id']}/billing/accounts", owner.key, json={"name": "Other"}).json
    made_default = sapi.call("POST", f"/workspaces/{ws['id']}/billing/accounts/{other['id']}/default", owner.key)
    assert made_default.status_code == 200
    assert run_queued(stripe_services, queue) == []  # the usage accepted before debits the old default account
    assert stripe_services.operations.get(OPERATOR, posted["id"]).status == "succeeded"
    assert top_ups(engine, account) == []
    assert_sound(stripe_services, account)


def test_stripe_limiting_requests_leaves_the_top_up_pending_and_a_retry_charges_it_once(
        sapi, stripe_services, queue, stripe_api, carded, engine):
    owner, ws, account = carded
    turn_on(sapi, owner, ws, threshold=2000)
    sapi.operator("POST", f"/workspaces/{ws['id']}/billing/usage", json=usage(0, 10))
    stripe_api.fail_status, stripe_api.fail_creates = 429, 2  # the SDK's own retry meets the second
    try:
        with pytest.raises(Exception) as raised:
            run_queued(stripe_services, queue)
    finally:
        stripe_api.fail_status, stripe_api.fail_creates = 500, 0
    assert type(raised.value).__name__ == "Unavailable"  # the task retries it
    [top_up] = top_ups(engine, account)
    assert (top_up["status"], top_up["attempts"]) == ("pending", 1)
    assert stripe_services.auto_top_ups.charge(account, top_up["id"]) == "auto_top_up_charged"
    assert len(intents_for(stripe_api, account)) == 1
    report_intents(sapi, stripe_api, account)
    assert run_queued(stripe_services, queue) == ["auto_top_up_credited"]
    assert_sound(stripe_services, account)


def test_a_stripe_error_that_is_not_a_decline_fails_the_top_up_as_stripe_error(sapi, stripe_services, queue,
                                                                              stripe_api, carded, engine):
    owner, ws, account = carded
    listen(engine, ws["id"])
    turn_on(sapi, owner, ws, threshold=2000)
    stripe_api.fail_status, stripe_api.fail_creates = 400, 1
    try:
        assert debit(sapi, stripe_services, queue, ws, 10) == ["auto_top_up_failed"]
    finally:
        stripe_api.fail_status, stripe_api.fail_creates = 500, 0
    [event] = events_of(engine, ws["id"])
    assert (event["data"]["failureCode"], event["data"]["failuresInARow"]) == ("stripe_error", 1)
    assert intents_for(stripe_api, account) == []
    assert_sound(stripe_services, account)
