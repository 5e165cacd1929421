"""Reading checkouts of either provider."""
from domain.errors import NotFound
from domain.ids import looks_like
from domain.models import Caller, Checkout, Page
from domain.services import access, keyset
from domain.services.context import Context
from domain.store import checkouts


class CheckoutService:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def get(self, caller: Caller, workspace_id: str, checkout_id: str) -> Checkout:
        with self._ctx.uow() as uow:
            access.workspace(uow.conn, caller, workspace_id)
            found = checkouts.get(uow.conn, checkout_id) if looks_like("chk", checkout_id) else None
        if found is None or found.workspace_id != workspace_id:
            raise NotFound("checkout not found")
        return found

    def of_workspace(self, caller: Caller, workspace_id: str, *, limit: int, cursor: str | None) -> Page:
        with self._ctx.uow() as uow:
            access.workspace(uow.conn, caller, workspace_id)
            found = checkouts.of_workspace(uow.conn, workspace_id, limit=limit + 1,
                                           before=keyset.position(cursor) if cursor else None)
        return keyset.page(found, limit)
