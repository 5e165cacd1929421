"""Reading checkouts of either provider."""
from datetime import datetime

from domain.errors import InvalidInput, NotFound
from domain.ids import looks_like
from domain.models import Caller, Checkout, Page
from domain.services import access
from domain.services.context import Context
from domain.store import checkouts


def _cursor(c: Checkout) -> str:
    return f"{c.created_at.isoformat()}|{c.id}"


def _after(cursor: str) -> tuple[datetime, str]:
    try:
        stamp, checkout_id = cursor.split("|", 1)
        return datetime.fromisoformat(stamp), checkout_id
    except ValueError:
        raise InvalidInput("the cursor is not one this service issued", field="cursor") from None


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
                                           before=_after(cursor) if cursor else None)
        more = len(found) > limit
        found = found[:limit]
        return Page(items=found, next_cursor=_cursor(found[-1]) if more else None)
