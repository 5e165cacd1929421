"""Counts for operators: the outbox backlog and checkouts by state, and how long the oldest have waited."""
from sqlalchemy import Connection, func, select, text

from domain.names import UNFINISHED, CheckoutStatus
from domain.store.tables import checkouts, operations


def operation_backlog(conn: Connection) -> dict[str, int]:
    o = operations.c
    rows = conn.execute(select(o.status, func.count()).where(o.status.in_(UNFINISHED))
                        .group_by(o.status)).all()
    return {status.value: 0 for status in UNFINISHED} | {status: count for status, count in rows}


def checkout_counts(conn: Connection) -> list[tuple[str, str, int]]:
    c = checkouts.c
    return [tuple(row) for row in conn.execute(
        select(c.provider, c.status, func.count()).group_by(c.provider, c.status).order_by(c.provider, c.status))]


# The literal predicates are those of the partial indexes operations_pending and checkouts_pending, so the
# planner reads only unfinished operations and pending checkouts, whatever the tables' size.
_UNFINISHED = ", ".join(f"'{status.value}'" for status in UNFINISHED)
_OLDEST_UNFINISHED = text(f"""
SELECT EXTRACT(EPOCH FROM now() - min(created_at)) FROM operations WHERE status IN ({_UNFINISHED})
""")
_OLDEST_PENDING_CHECKOUTS = text(f"""
SELECT provider, EXTRACT(EPOCH FROM now() - min(created_at)) FROM checkouts
WHERE status = '{CheckoutStatus.PENDING.value}' GROUP BY provider ORDER BY provider
""")


def oldest_unfinished_seconds(conn: Connection) -> float:
    """Seconds since the oldest unfinished (queued or running) operation was accepted; 0 when there is none."""
    return float(conn.execute(_OLDEST_UNFINISHED).scalar() or 0)


def oldest_pending_checkouts(conn: Connection) -> dict[str, float]:
    """Seconds since the oldest pending checkout of each provider that has one was created."""
    return {provider: float(age) for provider, age in conn.execute(_OLDEST_PENDING_CHECKOUTS)}
