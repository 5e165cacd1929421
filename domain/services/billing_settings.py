"""A workspace's billing settings: lowBalanceCents (the balance.low webhook's threshold) and auto top-up
(domain.services.auto_top_ups), with the card saved for the workspace's default account."""
from dataclasses import dataclass

from domain.models import AutoTopUpSettings, Caller, SavedCard, Workspace
from domain.services import access
from domain.services.context import Context
from domain.store import auto_top_ups, billing_settings

UNSET = object()  # a field the request left out: left as it is


@dataclass(frozen=True)
class BillingSettings:
    workspace_id: str
    low_balance_cents: int | None
    auto_top_up: AutoTopUpSettings | None = None  # None: not set up
    card: SavedCard | None = None  # the default account's Stripe Customer and saved card


class BillingSettingsService:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def get(self, caller: Caller, workspace_id: str) -> BillingSettings:
        with self._ctx.uow() as uow:
            workspace = access.workspace(uow.conn, caller, workspace_id).workspace
            return _read(uow.conn, workspace)

    def put(self, caller: Caller, workspace_id: str, *, low_balance_cents: int | None | object = UNSET,
            auto_top_up: AutoTopUpSettings | None | object = UNSET) -> BillingSettings:
        """Set the fields given (None clears one); the owner or an admin. Turning auto top-up on (again) starts its
        count of failures in a row afresh."""
        with self._ctx.uow() as uow:
            workspace = access.workspace(uow.conn, caller, workspace_id, manage=True).workspace
            if low_balance_cents is not UNSET:
                billing_settings.put_low_balance(uow.conn, workspace.id, low_balance_cents)
            if auto_top_up is not UNSET:
                auto_top_ups.put_settings(uow.conn, workspace.id, auto_top_up)
            found = _read(uow.conn, workspace)
            uow.commit()
        return found


def _read(conn, workspace: Workspace) -> BillingSettings:
    return BillingSettings(workspace.id, billing_settings.low_balance_cents(conn, workspace.id),
                           auto_top_ups.settings(conn, workspace.id),
                           auto_top_ups.saved_card(conn, workspace.default_billing_account_id))
