"""Credit grants of a billing account: per account (its owner) and per workspace (a member)."""
import falcon

from api import responses as r, schemas, views
from api.doc import doc
from domain.services.grants import GrantService

ORDER = ("Debits draw from active grants with the lower priority first, then the earliest expiresAt (none last), "
         "then the oldest; a Stripe refund draws from its payment's own grant first. A beat job debits what is left "
         "of a grant at its expiresAt as one `expiry` transaction (within a minute); until then it stays active and, "
         "expiring first, is drawn first.")


class AccountGrants:
    def __init__(self, grants: GrantService) -> None:
        self._grants = grants

    @doc("A billing account's credit grants, newest first (?status= filters)", query=schemas.GrantsQuery,
         response=r.GrantPage, errors=(401, 404, 422), notes=ORDER)
    def on_get(self, req: falcon.Request, resp: falcon.Response, account_id: str) -> None:
        q = schemas.query(schemas.GrantsQuery, req)
        found = self._grants.account_page(req.context.caller, account_id, limit=q.limit, cursor=q.cursor,
                                          status=q.status)
        resp.media = views.page(found, views.grant)


class WorkspaceGrants:
    def __init__(self, grants: GrantService) -> None:
        self._grants = grants

    @doc("Credit grants of the workspace's default billing account (billingAccountId picks another linked one), "
         "newest first", who="member", query=schemas.GrantsQuery, response=r.GrantPage, errors=(401, 404, 422),
         notes=ORDER)
    def on_get(self, req: falcon.Request, resp: falcon.Response, workspace_id: str) -> None:
        q = schemas.query(schemas.GrantsQuery, req)
        found = self._grants.workspace_page(req.context.caller, workspace_id, q.billing_account_id, limit=q.limit,
                                            cursor=q.cursor, status=q.status)
        resp.media = views.page(found, views.grant)
