"""Monthly spend limits per workspace (UTC calendar months): what usage and captures may spend, the alert steps.

Enforced where money is spent or reserved (domain.services.usage, domain.services.holds): an event or a hold that
would take the month's spending and what the workspace's holds reserve past the limit is refused. Each alert step
crossed is recorded once per month (spend_limit_alerts); the webhook events for them come with issue 17.
"""
from dataclasses import dataclass
from datetime import UTC, date, datetime

from domain.models import Caller
from domain.services import access
from domain.services.context import Context
from domain.store import spend

DEFAULT_ALERT_PERCENTS = (50, 80, 100)


@dataclass(frozen=True)
class Alert:
    percent: int
    limit_cents: int
    spent_cents: int
    crossed_at: datetime


@dataclass(frozen=True)
class SpendLimit:
    workspace_id: str
    monthly_limit_cents: int | None
    spent_cents: int
    reserved_cents: int
    alert_percents: list[int]
    period_start: datetime
    period_end: datetime
    alerts: list[Alert]


class SpendLimitService:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def put(self, caller: Caller, workspace_id: str, limit_cents: int | None,
            alert_percents: list[int] | None) -> SpendLimit:
        """Set (or, with None, lift) the workspace's monthly limit; the owner or an admin."""
        percents = sorted(set(alert_percents if alert_percents is not None else DEFAULT_ALERT_PERCENTS))
        with self._ctx.uow() as uow:
            workspace = access.workspace(uow.conn, caller, workspace_id, manage=True).workspace
            spend.put(uow.conn, workspace.id, limit_cents, percents)
            found = _read(uow.conn, workspace.id)
            uow.commit()
        return found

    def get(self, caller: Caller, workspace_id: str) -> SpendLimit:
        with self._ctx.uow() as uow:
            workspace = access.workspace(uow.conn, caller, workspace_id).workspace
            return _read(uow.conn, workspace.id)


def _read(conn, workspace_id: str) -> SpendLimit:
    standing = spend.standing(conn, workspace_id)
    start = datetime(standing.month.year, standing.month.month, 1, tzinfo=UTC)
    return SpendLimit(workspace_id, standing.limit_cents, standing.spent_cents, standing.reserved_cents,
                      standing.alert_percents, start, datetime.combine(_next_month(standing.month), start.timetz()),
                      [Alert(*row) for row in spend.alerts(conn, workspace_id, standing.month)])


def _next_month(month: date) -> date:
    return date(month.year + month.month // 12, month.month % 12 + 1, 1)
