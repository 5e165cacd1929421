"""Stripe Checkout: create a session for a workspace top-up; receive Stripe's webhooks."""
import falcon

from api import responses as r, schemas, views
from api.doc import doc
from domain.services.stripe_checkout import StripeCheckoutService

WEBHOOK_MAX_BYTES = 512 * 1024


class StripeCheckout:
    def __init__(self, stripe: StripeCheckoutService) -> None:
        self._stripe = stripe

    @doc("Create a Stripe Checkout Session to top up the workspace's default billing account",
         who="owner, admin", status=201, body=schemas.CreateCheckoutSession, response=r.CheckoutShape,
         errors=(401, 403, 404, 422, 502, 503),
         notes="The checkout is bound to the workspace default account at this moment. Send the payer to "
               "`url`. Stripe unreachable: 503; Stripe refusing: 502; either way the checkout reads "
               "`failed` and nothing is left pending. Credited once (`stripe_topup`) when Stripe reports "
               "the payment, by webhook or by the reconcile job.")
    def on_post(self, req: falcon.Request, resp: falcon.Response, workspace_id: str) -> None:
        body = schemas.load(schemas.CreateCheckoutSession, req)
        checkout = self._stripe.create(req.context.caller, workspace_id, body.amount_cents, body.success_url,
                                       body.cancel_url, req.get_header("Idempotency-Key"))
        resp.status, resp.location = falcon.HTTP_201, f"/workspaces/{workspace_id}/billing/checkouts/{checkout.id}"
        resp.media = views.checkout(checkout)


class StripeWebhook:
    public = True

    def __init__(self, stripe: StripeCheckoutService) -> None:
        self._stripe = stripe

    @doc("Stripe webhook endpoint: verified by Stripe-Signature, stored by event id, applied by a task",
         who="Stripe (no bearer key)", response=r.WebhookReceipt, errors=(400, 413),
         notes="A bad, stale (over 300 s) or missing signature: 400 and nothing stored. A repeat delivery "
               "answers 200 and changes nothing.")
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        raw = schemas.raw_body(req, WEBHOOK_MAX_BYTES)
        stored = self._stripe.receive(raw, req.get_header("Stripe-Signature"))
        resp.media = {"received": True, "duplicate": not stored}
