"""/workspaces/{workspaceId}/billing/holds: reserve now, capture (queued) or release later."""
import falcon

from api import idempotency, responses as r, schemas, views
from api.doc import doc
from domain.services.holds import HoldService

REFUSED = ("402 (problem type `/problems/insufficient-funds`): availableCents of the workspace's default account "
           "does not cover the amount; 402 (`/problems/spend-limit`): the month's spending, what the workspace's "
           "holds reserve and this amount would pass its spend limit. A hold moves no money: it lowers availableCents "
           "(usage events and new holds see it) until it is captured, released or expires; concurrent holds never "
           "reserve more than is available. A 402 is not recorded under an Idempotency-Key.")


class Holds:
    def __init__(self, holds: HoldService) -> None:
        self._holds = holds

    @doc("Place a hold on the workspace's default billing account", who="operator", status=201,
         body=schemas.CreateHold, response=r.HoldShape, errors=(401, 402, 403, 404, 409, 422), notes=REFUSED)
    def on_post(self, req: falcon.Request, resp: falcon.Response, workspace_id: str) -> None:
        body = schemas.load(schemas.CreateHold, req)
        hold = self._holds.create(req.context.caller, workspace_id, body.amount_cents,
                                  seconds=body.expires_in_seconds, description=body.description,
                                  reference=body.reference, idempotency_scope=idempotency.scope(req))
        resp.status, resp.media = falcon.HTTP_201, views.hold(hold)

    @doc("The workspace's holds, newest first (?status= filters)", who="member", query=schemas.HoldsQuery,
         response=r.HoldPage, errors=(401, 404, 422))
    def on_get(self, req: falcon.Request, resp: falcon.Response, workspace_id: str) -> None:
        q = schemas.query(schemas.HoldsQuery, req)
        found = self._holds.page(req.context.caller, workspace_id, limit=q.limit, cursor=q.cursor, status=q.status)
        resp.media = views.page(found, views.hold)


class HoldItem:
    def __init__(self, holds: HoldService) -> None:
        self._holds = holds

    @doc("A hold", who="member", response=r.HoldShape, errors=(401, 404))
    def on_get(self, req: falcon.Request, resp: falcon.Response, workspace_id: str, hold_id: str) -> None:
        resp.media = views.hold(self._holds.get(req.context.caller, workspace_id, hold_id))


class HoldCapture:
    def __init__(self, holds: HoldService) -> None:
        self._holds = holds

    @doc("Capture a hold: queue the debit of amountCents (0: a release)", who="operator", status=202,
         body=schemas.CaptureHold, response=r.OperationShape, errors=(401, 403, 404, 409, 422),
         notes="The captured amount is debited as `usage` once, drawn from the grants, and counts as the month's "
               "spending; the rest is released when the operation is applied. Capturing again answers the first "
               "capture's operation, with or without an Idempotency-Key and whatever its amount. More than the hold: "
               "422. A hold released, expired, or past its expiresAt: 409. The reservation covered the capture, so "
               "it is debited even where a grant that expired meanwhile took the balance below it. A capture is "
               "a transaction of kind `usage` (reference: the hold's, else its id) without a metric: the usage "
               "overview, which shows metered events, leaves it out.")
    def on_post(self, req: falcon.Request, resp: falcon.Response, workspace_id: str, hold_id: str) -> None:
        body = schemas.load(schemas.CaptureHold, req)
        op = self._holds.capture(req.context.caller, workspace_id, hold_id, body.amount_cents)
        resp.status, resp.location, resp.media = falcon.HTTP_202, f"/operations/{op.id}", views.operation(op)


class HoldRelease:
    def __init__(self, holds: HoldService) -> None:
        self._holds = holds

    @doc("Release a hold: it stops reserving at once", who="operator", response=r.HoldShape,
         errors=(401, 403, 404, 409),
         notes="A hold released or expired already is answered as it is; a captured one: 409.")
    def on_post(self, req: falcon.Request, resp: falcon.Response, workspace_id: str, hold_id: str) -> None:
        resp.media = views.hold(self._holds.release(req.context.caller, workspace_id, hold_id))
