"""x402 checkout: top up the workspace's default billing account with USDC paid over HTTP 402."""
from typing import Annotated

import falcon
from pydantic import Field

from api import responses as r, schemas, views
from api.doc import doc
from domain.services.x402_checkout import PaymentAccepted, PaymentRequired, X402CheckoutService

EXPOSED = "PAYMENT-REQUIRED, PAYMENT-RESPONSE, X-PAYMENT-RESPONSE, Location"

NOTES = """\
x402 version 2 on the wire. Without a payment header: 402, the v2 `PaymentRequired` base64-encoded in \
`PAYMENT-REQUIRED` and the same JSON as the body (not problem+json): `{x402Version: 2, error, resource, \
accepts: [{scheme: "exact", network, asset, amount, payTo, maxTimeoutSeconds, extra: {name, version}}]}`; \
`amount` is amountCents x 10,000 atomic units of 6-decimal USDC, `extra` is the token's EIP-712 domain. \
Pay by sending the same request with `PAYMENT-SIGNATURE` (or `X-PAYMENT`, version 1 or 2 payload): base64 \
JSON of an EIP-3009 PaymentPayload. A header that is not base64 JSON: 400. The payload must match this \
request exactly (scheme, network, asset, payTo, amount, maxTimeoutSeconds, EIP-712 name and version; \
authorization.to = payTo, value = amount, validBefore at least 6 s ahead), then the facilitator verifies it; \
otherwise 402 with the reason in `error` and nothing is credited. A refused payload leaves a `failed` \
checkout that the same payload may retry (e.g. after funding the wallet). Facilitator unreachable while \
verifying: 503, nothing charged, send the same payment again. x402 not configured here: 503 naming \
the setting (after the access checks: a workspace the caller may not see is 404). Accepted: 202 Operation \
plus `checkoutId`; \
the payments worker settles it through the facilitator and credits `x402_topup` once per (network, payer, \
nonce), only after settlement succeeded. The same payload again answers the same checkout and operation \
(202, with `PAYMENT-RESPONSE` once settlement is final; `X-PAYMENT-RESPONSE` for version 1); while another \
request with it is still being verified: 409, retry; the same authorization for another workspace: 409. A \
settlement whose outcome is unknown (timeout, 5xx, settlement_pending) stays pending and is re-settled with \
the stored payload by a reconcile job, never answered with a fresh 402; past validBefore (+60 s) it \
expires, or fails as `settlement_unconfirmed` when the facilitator reported a transaction it never \
confirmed (check the chain before crediting by hand). 402 answers are not stored under an Idempotency-Key, so \
one key can carry the unpaid and the paid request. The operator key is refused (403): a top-up is paid by \
the workspace's owner or an admin. SDK buyers: x402 clients refuse payments over $1 by default; raise \
`set_spend_controls({"max_amount_per_payment": ...})` for larger top-ups."""


class X402TopUp(schemas.Body):
    model_config = schemas.examples({"amountCents": 500})

    amount_cents: Annotated[int, Field(ge=1, le=1_000_000, description="Integer cents, 1 to 1,000,000.")]


class X402Checkout:
    def __init__(self, x402: X402CheckoutService) -> None:
        self._x402 = x402

    @doc("Top up the workspace's default billing account with USDC over x402", who="owner, admin",
         status=202, body=X402TopUp, response=r.X402AcceptedShape, errors=(401, 403, 404, 409, 422, 502, 503),
         answers={402: ("Payment required: pay on these terms (x402 PaymentRequired, not problem+json)",
                        r.X402PaymentRequiredShape)}, notes=NOTES)
    def on_post(self, req: falcon.Request, resp: falcon.Response, workspace_id: str) -> None:
        body = schemas.load(X402TopUp, req)
        header = req.get_header("PAYMENT-SIGNATURE") or req.get_header("X-PAYMENT")
        _answer(resp, self._x402.checkout(req.context.caller, workspace_id, body.amount_cents, header, req.url))


def _answer(resp: falcon.Response, answer: PaymentRequired | PaymentAccepted) -> None:
    resp.set_header("Access-Control-Expose-Headers", EXPOSED)
    if isinstance(answer, PaymentRequired):
        resp.status, resp.media = falcon.HTTP_402, answer.body
        resp.set_header("PAYMENT-REQUIRED", answer.header)
        return
    resp.status, resp.location = falcon.HTTP_202, f"/operations/{answer.operation.id}"
    resp.media = views.operation(answer.operation) | {"checkoutId": answer.checkout.id}
    if answer.payment_response:
        resp.set_header("X-PAYMENT-RESPONSE" if answer.version == 1 else "PAYMENT-RESPONSE", answer.payment_response)
