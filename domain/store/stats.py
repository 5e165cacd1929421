"""Counts for operators: the outbox backlog and checkouts by state."""
from sqlalchemy import Connection, func, select

from domain.names import UNFINISHED
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
