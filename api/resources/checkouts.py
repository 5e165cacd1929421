"""/workspaces/{workspaceId}/billing/checkouts: checkouts of both providers."""
import falcon

from api import responses as r, schemas, views
from api.doc import doc
from domain.services.checkouts import CheckoutService


class Checkouts:
    def __init__(self, checkouts: CheckoutService) -> None:
        self._checkouts = checkouts

    @doc("The workspace's checkouts (Stripe and x402), newest first", who="member", query=schemas.PageQuery,
         response=r.CheckoutList, errors=(401, 404, 422))
    def on_get(self, req: falcon.Request, resp: falcon.Response, workspace_id: str) -> None:
        q = schemas.query(schemas.PageQuery, req)
        found = self._checkouts.of_workspace(req.context.caller, workspace_id, limit=q.limit, cursor=q.cursor)
        resp.media = views.page(found, views.checkout)


class CheckoutItem:
    def __init__(self, checkouts: CheckoutService) -> None:
        self._checkouts = checkouts

    @doc("A checkout (Stripe or x402)", who="member", response=r.CheckoutShape, errors=(401, 404))
    def on_get(self, req: falcon.Request, resp: falcon.Response, workspace_id: str, checkout_id: str) -> None:
        resp.media = views.checkout(self._checkouts.get(req.context.caller, workspace_id, checkout_id))
