"""A workspace's billing settings: lowBalanceCents (the balance.low webhook's threshold); auto top-up joins it."""
from dataclasses import dataclass

from domain.models import Caller
from domain.services import access
from domain.services.context import Context
from domain.store import billing_settings

UNSET = object()  # a field the request left out: left as it is


@dataclass(frozen=True)
class BillingSettings:
    workspace_id: str
    low_balance_cents: int | None


class BillingSettingsService:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def get(self, caller: Caller, workspace_id: str) -> BillingSettings:
        with self._ctx.uow() as uow:
            workspace = access.workspace(uow.conn, caller, workspace_id).workspace
            return _read(uow.conn, workspace.id)

    def put(self, caller: Caller, workspace_id: str, *, low_balance_cents: int | None | object = UNSET) -> BillingSettings:
        """Set the fields given (None clears one); the owner or an admin."""
        with self._ctx.uow() as uow:
            workspace = access.workspace(uow.conn, caller, workspace_id, manage=True).workspace
            if low_balance_cents is not UNSET:
                billing_settings.put_low_balance(uow.conn, workspace.id, low_balance_cents)
            found = _read(uow.conn, workspace.id)
            uow.commit()
        return found


def _read(conn, workspace_id: str) -> BillingSettings:
    return BillingSettings(workspace_id, billing_settings.low_balance_cents(conn, workspace_id))
