"""Spend-limit SQL: each workspace's monthly limit, what it spent per UTC month, the alert steps it crossed.

A workspace's spending is serialised by the usage batch lock (store.usage.lock_workspace): usage batches, new
holds and captures of one workspace take it first, so each reads the month's spending as the last one left it.
"""
from dataclasses import dataclass
from datetime import UTC, date, datetime

from sqlalchemy import Connection, text

from domain import times
from domain.names import WebhookEventType
from domain.store import webhook_events

MONTH = "date_trunc('month', now() AT TIME ZONE 'UTC')::date"
# The month's spending, what the workspace's unsettled holds reserve, and its limit (NULL: none), as SQL
# expressions over :workspace_id.
SPENT = f"COALESCE((SELECT spent_cents FROM workspace_spend WHERE workspace_id = :workspace_id AND month = {MONTH}), 0)"
RESERVED = ("COALESCE((SELECT SUM(amount_cents) FROM holds WHERE workspace_id = :workspace_id "
            "AND settled_at IS NULL), 0)")
LIMIT = "(SELECT monthly_limit_cents FROM spend_limits WHERE workspace_id = :workspace_id)"


@dataclass(frozen=True)
class Standing:
    limit_cents: int | None
    spent_cents: int  # this UTC month: usage and captures
    reserved_cents: int  # the workspace's unsettled holds
    alert_percents: list[int]
    month: date

    def room(self) -> int | None:
        """What may still be spent or reserved this month; None: no limit."""
        return None if self.limit_cents is None else self.limit_cents - self.spent_cents - self.reserved_cents


_STANDING = text(f"""
SELECT {LIMIT} AS limit_cents, {SPENT} AS spent_cents, {RESERVED} AS reserved_cents,
       COALESCE((SELECT alert_percents FROM spend_limits WHERE workspace_id = :workspace_id),
                ARRAY[50, 80, 100]) AS alert_percents, {MONTH} AS month
""")


def standing(conn: Connection, workspace_id: str) -> Standing:
    row = conn.execute(_STANDING, {"workspace_id": workspace_id}).mappings().one()
    return Standing(row["limit_cents"], int(row["spent_cents"]), int(row["reserved_cents"]),
                    list(row["alert_percents"]), row["month"])


# Spending added per workspace, and every alert step each addition crossed (from below the step to at or above it)
# recorded once.
_ADD = text(f"""
WITH added AS (
    SELECT * FROM unnest(CAST(:workspaces AS text[]), CAST(:cents AS bigint[])) AS v(workspace_id, cents)
), moved AS (
    INSERT INTO workspace_spend AS s (workspace_id, month, spent_cents)
    SELECT workspace_id, {MONTH}, cents FROM added ORDER BY workspace_id
    ON CONFLICT (workspace_id, month) DO UPDATE SET spent_cents = s.spent_cents + EXCLUDED.spent_cents
    RETURNING s.workspace_id, s.month, s.spent_cents
)
INSERT INTO spend_limit_alerts (workspace_id, month, percent, limit_cents, spent_cents)
SELECT moved.workspace_id, moved.month, p.percent, l.monthly_limit_cents, moved.spent_cents
FROM moved JOIN added ON added.workspace_id = moved.workspace_id
JOIN spend_limits l ON l.workspace_id = moved.workspace_id, unnest(l.alert_percents) AS p(percent)
WHERE l.monthly_limit_cents IS NOT NULL
  AND (moved.spent_cents - added.cents) * 100 < l.monthly_limit_cents * p.percent
  AND moved.spent_cents * 100 >= l.monthly_limit_cents * p.percent
ON CONFLICT DO NOTHING
RETURNING workspace_id, month, percent, limit_cents, spent_cents, crossed_at
""")


def add(conn: Connection, workspace_id: str, cents: int) -> None:
    """Count `cents` spent by the workspace this month (in the transaction that debits them); each alert step
    crossed emits spend_limit.alert."""
    add_many(conn, {workspace_id: cents})


def add_many(conn: Connection, spent: dict[str, int]) -> None:
    """add() for many workspaces in one statement."""
    spent = {workspace_id: cents for workspace_id, cents in spent.items() if cents > 0}
    if not spent:
        return
    crossed = conn.execute(_ADD, {"workspaces": list(spent), "cents": list(spent.values())}).all()
    for row in sorted(crossed, key=lambda r: (r.workspace_id, r.percent)):
        webhook_events.emit(conn, workspace_id=row.workspace_id, type=WebhookEventType.SPEND_LIMIT_ALERT, data={
            "workspaceId": row.workspace_id, "percent": row.percent, "limitCents": row.limit_cents,
            "spentCents": row.spent_cents, "periodStart": times.rfc3339(_month_start(row.month)),
            "crossedAt": row.crossed_at})


def _month_start(month: date) -> datetime:
    return datetime(month.year, month.month, 1, tzinfo=UTC)


_PUT = text("""
INSERT INTO spend_limits AS l (workspace_id, monthly_limit_cents, alert_percents, updated_at)
VALUES (:workspace_id, :limit, :percents, now())
ON CONFLICT (workspace_id) DO UPDATE SET monthly_limit_cents = EXCLUDED.monthly_limit_cents,
    alert_percents = EXCLUDED.alert_percents, updated_at = now()
""")


def put(conn: Connection, workspace_id: str, limit_cents: int | None, alert_percents: list[int]) -> None:
    conn.execute(_PUT, {"workspace_id": workspace_id, "limit": limit_cents, "percents": alert_percents})


_ALERTS = text("""
SELECT percent, limit_cents, spent_cents, crossed_at FROM spend_limit_alerts
WHERE workspace_id = :workspace_id AND month = :month ORDER BY percent
""")


def alerts(conn: Connection, workspace_id: str, month: date) -> list[tuple[int, int, int, object]]:
    """(percent, limit, spent, crossed_at) of the steps the workspace crossed in that month."""
    return [tuple(row) for row in conn.execute(_ALERTS, {"workspace_id": workspace_id, "month": month})]
