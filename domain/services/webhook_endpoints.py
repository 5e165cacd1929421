"""A workspace's webhook endpoints and their deliveries, as its owner and admins manage them."""
from domain.errors import Forbidden, InvalidInput, NotFound
from domain.ids import looks_like, new_id
from domain.models import Caller, Page, WebhookDelivery, WebhookEndpoint
from domain.names import Task
from domain.services import access, keyset
from domain.services.context import Context
from domain.store import webhooks
from domain.webhooks import Refused, new_secret


class WebhookEndpointService:
    def __init__(self, ctx: Context, sender) -> None:
        self._ctx = ctx
        self._sender = sender

    def create(self, caller: Caller, workspace_id: str, url: str, events: list[str],
               description: str | None) -> WebhookEndpoint:
        """A new endpoint with its signing secret (shown this once); the owner or an admin. The URL must be
        https on a public address (its name is resolved and checked, and again at every attempt)."""
        with self._ctx.uow() as uow:
            workspace = access.workspace(uow.conn, caller, workspace_id, manage=True).workspace
        try:
            self._sender.check(url)
        except Refused as exc:
            raise InvalidInput(str(exc), field="url") from None
        with self._ctx.uow() as uow:
            endpoint = webhooks.create(uow.conn, endpoint_id=new_id("wh"), workspace_id=workspace.id, url=url,
                                       events=sorted(set(events)), description=description, secret=new_secret(),
                                       created_by=caller.name)
            uow.commit()
        return endpoint

    def list(self, caller: Caller, workspace_id: str, *, limit: int, cursor: str | None) -> Page:
        with self._ctx.uow() as uow:
            self._readable(uow.conn, caller, workspace_id)
            found = webhooks.of_workspace(uow.conn, workspace_id, limit=limit + 1,
                                          before=keyset.position(cursor) if cursor else None)
        return keyset.page(found, limit)

    def get(self, caller: Caller, workspace_id: str, endpoint_id: str) -> WebhookEndpoint:
        with self._ctx.uow() as uow:
            self._readable(uow.conn, caller, workspace_id)
            return _found(uow.conn, workspace_id, endpoint_id)

    def delete(self, caller: Caller, workspace_id: str, endpoint_id: str) -> None:
        """No event reaches it any more; its pending deliveries end failed."""
        with self._ctx.uow() as uow:
            access.workspace(uow.conn, caller, workspace_id, manage=True)
            if not (looks_like("wh", endpoint_id) and webhooks.delete(uow.conn, workspace_id, endpoint_id)):
                raise NotFound("webhook endpoint not found")
            uow.commit()

    def deliveries(self, caller: Caller, workspace_id: str, endpoint_id: str, *, limit: int,
                   cursor: str | None) -> Page:
        with self._ctx.uow() as uow:
            self._readable(uow.conn, caller, workspace_id)
            _found(uow.conn, workspace_id, endpoint_id)
            found = webhooks.deliveries(uow.conn, endpoint_id, limit=limit + 1,
                                        before=keyset.position(cursor) if cursor else None)
        return keyset.page(found, limit)

    def retry(self, caller: Caller, workspace_id: str, endpoint_id: str, delivery_id: str) -> WebhookDelivery:
        """Attempt the delivery again now (also one that succeeded or failed for good), with the same webhook-id."""
        with self._ctx.uow() as uow:
            access.workspace(uow.conn, caller, workspace_id, manage=True)
            _found(uow.conn, workspace_id, endpoint_id)
            delivery = webhooks.retry(uow.conn, endpoint_id, delivery_id) if looks_like("dlv", delivery_id) else None
            if delivery is None:
                raise NotFound("delivery not found")
            uow.after_commit(lambda: self._ctx.enqueue(Task.DELIVER_WEBHOOK, delivery_id=delivery.id))
            uow.commit()
        return delivery

    @staticmethod
    def _readable(conn, caller: Caller, workspace_id: str) -> None:
        """Endpoints name receivers and their deliveries tell of them: the owner, admins and the operator."""
        if access.workspace(conn, caller, workspace_id).role == "member":
            raise Forbidden("only the workspace's owner or an admin may see its webhook endpoints")


def _found(conn, workspace_id: str, endpoint_id: str) -> WebhookEndpoint:
    found = webhooks.get(conn, workspace_id, endpoint_id) if looks_like("wh", endpoint_id) else None
    if found is None:
        raise NotFound("webhook endpoint not found")
    return found
