"""/operations/{operationId}"""
import falcon

from api import responses as r, views
from api.doc import doc
from domain.services.operations import OperationService


class OperationItem:
    def __init__(self, operations: OperationService) -> None:
        self._operations = operations

    @doc("A queued operation: queued, running, succeeded (with result) or failed (with error)",
         who="caller who queued it, operator", response=r.OperationShape, errors=(401, 404))
    def on_get(self, req: falcon.Request, resp: falcon.Response, operation_id: str) -> None:
        resp.media = views.operation(self._operations.get(req.context.caller, operation_id))
