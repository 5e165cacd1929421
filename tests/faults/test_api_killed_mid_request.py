"""The API process SIGKILLed while a keyed checkout waits on a slow Stripe: the key's claim is released
after its lease, and the retry resumes the same checkout and gets the session Stripe made meanwhile."""
import threading

from tests.standins.stripe_api import StripeStandIn
from tests.processes import assert_audit_passes, wait_until

LEASE_SECONDS = 8


def test_a_key_held_by_a_killed_api_is_free_after_its_lease_and_the_retry_creates_nothing_twice(stack, tmp_path):
    stripe = StripeStandIn().start()
    try:
        stack.env.update(STRIPE_API_KEY="sk_test_standin", STRIPE_API_BASE=stripe.url,
                         STRIPE_WEBHOOK_SECRET="whsec_test", BILLING_IDEMPOTENCY_LEASE_SECONDS=str(LEASE_SECONDS))
        stack.start(worker=False)
        owner = stack.api.new_user()
        workspace = stack.api.new_workspace(owner)
        path = f"/workspaces/{workspace['id']}/billing/checkout"
        body = {"amountCents": 1200, "successUrl": "https://a.example/s", "cancelUrl": "https://a.example/c"}
        key = {"Idempotency-Key": "topup-killed"}

        stripe.delay_seconds, stripe.delay_creates = 3, 1
        first = threading.Thread(target=lambda: _swallow(lambda: stack.api.call("POST", path, owner.key, json=body,
                                                                               headers=key)))
        first.start()
        wait_until(lambda: any(method == "POST" for method, _ in stripe.requests), 10, "the create to reach Stripe")
        api = next(p for p in stack.processes if p.name == "api")
        api.kill()  # mid-request: the claim is never finished nor released
        first.join(timeout=30)

        stack.start(worker=False)
        held = stack.api.call("POST", path, owner.key, json=body, headers=key)
        assert held.status_code == 409 and held.headers["content-type"] == "application/problem+json", held.text
        assert 1 <= int(held.headers["retry-after"]) <= LEASE_SECONDS
        wait_until(lambda: stripe.sessions, 10, "Stripe to make the session the killed API asked for")

        retried = wait_until(lambda: _created(stack.api.call("POST", path, owner.key, json=body, headers=key)),
                             LEASE_SECONDS + 10, "the lease to run out and the retry to run", every=0.5)
        made = list(stripe.sessions.values())
        assert [s["id"] for s in made] == [retried["stripeSessionId"]]  # the session made for the killed request
        assert made[0]["client_reference_id"] == retried["id"]
        listed = stack.api.call("GET", f"/workspaces/{workspace['id']}/billing/checkouts", owner.key).json["data"]
        assert [c["id"] for c in listed] == [retried["id"]]
        replayed = stack.api.call("POST", path, owner.key, json=body, headers=key)
        assert replayed.headers["idempotent-replayed"] == "true" and replayed.json == retried
        assert_audit_passes(stack)
    finally:
        stripe.stop()


def _created(result) -> dict | None:
    if result.status_code == 409:
        return None
    assert result.status_code == 201, result.text
    return result.json


def _swallow(call) -> None:
    try:
        call()
    except Exception:  # the connection dies with the API
        pass
