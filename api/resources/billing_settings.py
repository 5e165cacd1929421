"""/workspaces/{workspaceId}/billing/settings: lowBalanceCents (and auto top-up)."""
import falcon

from api import responses as r, schemas, views
from api.doc import doc
from domain.services.billing_settings import UNSET, BillingSettingsService


class BillingSettings:
    def __init__(self, settings: BillingSettingsService) -> None:
        self._settings = settings

    @doc("The workspace's billing settings", who="member", response=r.BillingSettingsShape, errors=(401, 404))
    def on_get(self, req: falcon.Request, resp: falcon.Response, workspace_id: str) -> None:
        resp.media = views.billing_settings(self._settings.get(req.context.caller, workspace_id))

    @doc("Change the workspace's billing settings", who="owner, admin", body=schemas.PutBillingSettings,
         response=r.BillingSettingsShape, errors=(401, 403, 404, 422),
         notes="Only the fields given change; null clears one.")
    def on_put(self, req: falcon.Request, resp: falcon.Response, workspace_id: str) -> None:
        body = schemas.load(schemas.PutBillingSettings, req)
        given = {"low_balance_cents": body.low_balance_cents} if "low_balance_cents" in body.model_fields_set else {}
        resp.media = views.billing_settings(self._settings.put(req.context.caller, workspace_id, **given))
