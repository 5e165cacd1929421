"""An auto top-up recorded while Redis is down (the worker applies the debit that crosses the threshold, its message
for the charge refused): it stays pending in PostgreSQL, and once Redis is back the relay sends it, once."""
from sqlalchemy import text

from tests.auto_top_ups import (checkout_saving_the_card, credits_of, intents_for, pay_and_report, settings, top_ups,
                                turn_on, usage)
from tests.processes import (WAIT_ON_LOCKS, account_locked, assert_audit_passes, blocked_mid_transaction,
                             wait_for_operations, wait_until)
from tests.standins.stripe_api import signed_event

SECRET = "whsec_auto_top_up_fault"


def test_a_top_up_recorded_while_redis_is_down_is_charged_once_after_it_returns(stack, stripe_api, engine):
    stack.env.update(WAIT_ON_LOCKS, STRIPE_API_KEY="sk_test_fault", STRIPE_WEBHOOK_SECRET=SECRET,
                     STRIPE_API_BASE=stripe_api.url)
    stack.start()
    api = stack.api
    owner = api.new_user()
    ws = api.new_workspace(owner)
    account = ws["defaultBillingAccountId"]
    pay_and_report(api, SECRET, stripe_api, checkout_saving_the_card(api, owner, ws))
    wait_until(lambda: settings(api, owner.key, ws)["autoTopUp"]["paymentMethod"], 30, "the card to be saved")
    turn_on(api, owner, ws, threshold=2000, amount=700)

    with account_locked(engine, account):
        posted = api.operator("POST", f"/workspaces/{ws['id']}/billing/usage", json=usage(0, 25)).json["id"]
        blocked_mid_transaction(engine, posted)  # the worker holds the debit, waiting on the account
        stack.broker.stop()
    assert wait_for_operations(engine, [posted]) == {posted: "succeeded"}  # the debit and its top-up committed
    [top_up] = top_ups(engine, account)
    assert top_up["status"] == "pending" and intents_for(stripe_api, account) == []
    assert "enqueue of payments.charge_auto_top_up failed" in stack.worker.output()

    stack.broker.start()
    with engine.begin() as conn:  # the relay leaves alone what was touched less than 30 s ago
        conn.execute(text("UPDATE auto_top_ups SET updated_at = updated_at - interval '1 minute' "
                          "WHERE billing_account_id = :a"), {"a": account})
    relayed = stack.billing("relay")
    assert relayed.returncode == 0 and "relayed 1 auto top-up(s)" in relayed.stdout, relayed.stdout + relayed.stderr
    wait_until(lambda: top_ups(engine, account)[0]["status"] == "processing", 30, "the worker to charge the card")
    [intent] = intents_for(stripe_api, account)
    assert intent["amount"] == 700

    payload, signature = signed_event(SECRET, *stripe_api.intent_event(intent["id"]))
    for _ in range(2):
        api.call("POST", "/webhooks/stripe", body=payload,
                 headers={"Stripe-Signature": signature, "Content-Type": "application/json"})
    wait_until(lambda: top_ups(engine, account)[0]["status"] == "succeeded", 30, "the top-up to be credited")
    assert [amount for _, amount in credits_of(engine, account)] == [500, 700]
    assert len(intents_for(stripe_api, account)) == 1
    assert_audit_passes(stack)
