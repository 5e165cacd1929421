"""/workspaces/{workspaceId}/billing/spend-limit: the workspace's monthly spend limit."""
import falcon

from api import responses as r, schemas, views
from api.doc import doc
from domain.services.spend_limits import SpendLimitService

ENFORCED = ("A usage event that would take the month's spending (usage and captures, UTC calendar month) plus what the "
            "workspace's holds reserve past the limit is refused (`refused`, reason `spend_limit: ...` in the "
            "operation's result); a hold that would: 402 with problem type `/problems/spend-limit`. An event or hold "
            "that lands exactly on the limit is accepted. Each alert step crossed is recorded once a month.")


class SpendLimit:
    def __init__(self, spend_limits: SpendLimitService) -> None:
        self._spend_limits = spend_limits

    @doc("The workspace's spend limit and this month's spending", who="member", response=r.SpendLimitShape,
         errors=(401, 404), notes=ENFORCED)
    def on_get(self, req: falcon.Request, resp: falcon.Response, workspace_id: str) -> None:
        resp.media = views.spend_limit(self._spend_limits.get(req.context.caller, workspace_id))

    @doc("Set or lift the workspace's monthly spend limit", who="owner, admin", body=schemas.PutSpendLimit,
         response=r.SpendLimitShape, errors=(401, 403, 404, 422), notes=ENFORCED)
    def on_put(self, req: falcon.Request, resp: falcon.Response, workspace_id: str) -> None:
        body = schemas.load(schemas.PutSpendLimit, req)
        found = self._spend_limits.put(req.context.caller, workspace_id, body.monthly_limit_cents, body.alert_percents)
        resp.media = views.spend_limit(found)
