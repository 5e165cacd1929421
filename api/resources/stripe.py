"""Stripe Checkout: create a session for a workspace top-up; receive Stripe's webhooks."""
import falcon

from api import idempotency, json_body, responses as r, schemas, views
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
               "`url`. Stripe not configured here: 503 naming the setting, nothing recorded (after the access "
               "checks: a workspace the caller may not see is 404). Stripe unreachable: 503; Stripe refusing: "
               "502. Neither answer is recorded under an "
               "Idempotency-Key: the retry with the same key and body resumes the same checkout and asks "
               "Stripe again under the same Stripe idempotency key, so it never creates a second session. "
               "Without a key the failed checkout reads `failed`. A keyed checkout that is never retried "
               "is closed as `failed` by the reconcile job. Credited once (`stripe_topup`) when Stripe "
               "reports the payment, by webhook or by the reconcile job. With `savePaymentMethod`, the card is then "
               "saved for the billing account's auto top-ups (read from Stripe by a task; the relay asks again "
               "if that is lost).")
    def on_post(self, req: falcon.Request, resp: falcon.Response, workspace_id: str) -> None:
        body = schemas.load(schemas.CreateCheckoutSession, req)
        checkout = self._stripe.create(req.context.caller, workspace_id, body.amount_cents, body.success_url,
                                       body.cancel_url, idempotency.scope(req),
                                       save_payment_method=body.save_payment_method)
        resp.status, resp.location = falcon.HTTP_201, f"/workspaces/{workspace_id}/billing/checkouts/{checkout.id}"
        resp.media = views.checkout(checkout)


class StripeWebhook:
    public = True

    def __init__(self, stripe: StripeCheckoutService) -> None:
        self._stripe = stripe

    @doc("Stripe webhook endpoint: verified by Stripe-Signature, stored by event id, applied by a task",
         who="Stripe (no bearer key)", response=r.WebhookReceipt, errors=(400, 413, 503),
         notes="Stripe or its webhook secret not configured here: 503 naming the setting, nothing stored "
               "(Stripe delivers again later). A bad, stale (over 300 s) or missing signature: 400 and nothing "
               "stored. A correctly signed body "
               "that is not a well-formed event (not a JSON object; no `id`, `type` or `data.object`; wrong "
               "types, including in the fields read of `charge.refunded`, `checkout.session.*` and "
               "`payment_intent.*` objects): 400, nothing stored or queued. A repeat delivery answers 200 and "
               "changes nothing. The refunds of one checkout never debit more than it credited; the excess is "
               "shown by `billing audit`. `payment_intent.succeeded` of an auto top-up (its metadata names it) "
               "credits it once; `payment_intent.payment_failed` fails it; a checkout's PaymentIntent events are "
               "left to its `checkout.session.*` events.")
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        raw = json_body.raw_body(req, WEBHOOK_MAX_BYTES)
        stored = self._stripe.receive(raw, req.get_header("Stripe-Signature"))
        resp.media = {"received": True, "duplicate": not stored}
