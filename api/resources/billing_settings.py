"""/workspaces/{workspaceId}/billing/settings: lowBalanceCents and auto top-up."""
import falcon

from api import responses as r, schemas, views
from api.doc import doc
from domain.services.billing_settings import UNSET, BillingSettingsService


AUTO_TOP_UP = (
    "Auto top-up: a card is saved for the workspace's default account by a Stripe checkout created with "
    "`savePaymentMethod: true` (shown as `autoTopUp.paymentMethod`, the card of the last such checkout). While "
    "`autoTopUp.enabled` and a card is saved, a debit (usage, a hold's capture) that leaves the default account's "
    "balance below `thresholdCents` starts one off-session Stripe payment of `amountCents`: at most one in flight "
    "per account and `maxPerDay` started per UTC day (failed ones count). Stripe's `payment_intent.succeeded` "
    "credits it once (`stripe_topup`, a paid grant) and emits `auto_top_up.succeeded`; a decline or "
    "`authentication_required` emits `auto_top_up.failed`, and the third failure in a row sets `enabled` to "
    "false. `autoTopUp` reads `{enabled: false, thresholdCents: null, amountCents: null, maxPerDay: 3, ...}` "
    "while it is not set up; it may be set up (even enabled) before a card is saved.")


class BillingSettings:
    def __init__(self, settings: BillingSettingsService) -> None:
        self._settings = settings

    @doc("The workspace's billing settings", who="member", response=r.BillingSettingsShape, errors=(401, 404),
         notes=AUTO_TOP_UP)
    def on_get(self, req: falcon.Request, resp: falcon.Response, workspace_id: str) -> None:
        resp.media = views.billing_settings(self._settings.get(req.context.caller, workspace_id))

    @doc("Change the workspace's billing settings", who="owner, admin", body=schemas.PutBillingSettings,
         response=r.BillingSettingsShape, errors=(401, 403, 404, 422),
         notes="Only the fields given change; null clears one. " + AUTO_TOP_UP)
    def on_put(self, req: falcon.Request, resp: falcon.Response, workspace_id: str) -> None:
        body = schemas.load(schemas.PutBillingSettings, req)
        given = {"low_balance_cents": body.low_balance_cents} if "low_balance_cents" in body.model_fields_set else {}
        if "auto_top_up" in body.model_fields_set:
            given["auto_top_up"] = body.auto_top_up.domain() if body.auto_top_up else None
        resp.media = views.billing_settings(self._settings.put(req.context.caller, workspace_id, **given))
