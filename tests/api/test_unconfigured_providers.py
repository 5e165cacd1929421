"""A payment provider the deployment did not configure: 503 naming the setting (API.md, Conventions), after the
access checks, so a workspace the caller may not see is still 404; nothing is recorded."""
import pytest
from falcon import testing

from api.app import create_app
from domain.providers.stripe_gateway import StripeGateway
from domain.services.context import Config, Context
from domain.services.registry import Services
from domain.store.uow import UnitOfWork
from tests.api.checks import assert_problem, row_counts
from tests.factories import OPERATOR_TOKEN, Api
from tests.standins.stripe_api import signed_event

CHECKOUTS = [("/billing/checkout", {"amountCents": 1500, "successUrl": "https://app.example/ok",
                                    "cancelUrl": "https://app.example/no"}, "STRIPE_API_KEY"),
             ("/billing/checkout/x402", {"amountCents": 1500}, "X402_PAY_TO")]


@pytest.mark.parametrize("path, body, setting", CHECKOUTS, ids=["stripe", "x402"])
def test_a_checkout_through_a_provider_not_configured_is_503_naming_the_setting(api, engine, path, body, setting):
    owner, stranger = api.new_user(), api.new_user("Eve")
    ws = api.new_workspace(owner)
    before = row_counts(engine, ("checkouts",))

    result = api.call("POST", f"/workspaces/{ws['id']}{path}", owner.key, json=body)
    assert setting in assert_problem(result, 503)["detail"]
    assert "Retry-After" not in result.headers  # no retry helps until an operator configures it
    assert_problem(api.call("POST", f"/workspaces/{ws['id']}{path}", stranger.key, json=body), 404)
    assert_problem(api.call("POST", f"/workspaces/ws_{'0' * 32}{path}", owner.key, json=body), 404)
    assert row_counts(engine, ("checkouts",)) == before


def test_a_stripe_webhook_is_503_until_stripe_and_its_webhook_secret_are_configured(api, engine, queue):
    before = row_counts(engine, ("stripe_events",))
    payload, signature = signed_event("whsec_any", "checkout.session.completed", {"id": "cs_1"})
    headers = {"Stripe-Signature": signature, "Content-Type": "application/json"}
    assert "STRIPE_API_KEY" in assert_problem(api.call("POST", "/webhooks/stripe", body=payload, headers=headers),
                                              503)["detail"]
    gateway = StripeGateway("sk_test_standin", None, "http://127.0.0.1:9", timeout_seconds=1)
    keyed = Api(testing.TestClient(create_app(
        Services(Context(uow=lambda: UnitOfWork(engine), enqueue=queue, config=Config(), stripe=gateway)),
        OPERATOR_TOKEN, {})))
    assert "STRIPE_WEBHOOK_SECRET" in assert_problem(
        keyed.call("POST", "/webhooks/stripe", body=payload, headers=headers), 503)["detail"]
    assert row_counts(engine, ("stripe_events",)) == before
