"""Stored Stripe events: one row per Stripe event id, however often it is delivered."""
from datetime import timedelta

from sqlalchemy import Connection, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from domain.store.tables import stripe_events

_e = stripe_events.c


def insert_event(conn: Connection, event_id: str, event_type: str, payload: dict) -> bool:
    """Store; False when this event id was stored before."""
    stmt = (pg_insert(stripe_events).values(id=event_id, type=event_type, payload=payload)
            .on_conflict_do_nothing().returning(_e.id))
    return conn.execute(stmt).first() is not None


def get_for_update(conn: Connection, event_id: str):
    return conn.execute(select(stripe_events).where(_e.id == event_id).with_for_update()).mappings().first()


def mark_processed(conn: Connection, event_id: str, outcome: str) -> None:
    conn.execute(update(stripe_events).where(_e.id == event_id).values(processed_at=func.now(), outcome=outcome))


def unprocessed(conn: Connection, *, older_than: timedelta, limit: int = 500) -> list[str]:
    query = (select(_e.id).where(_e.processed_at.is_(None), _e.received_at < func.now() - older_than)
             .order_by(_e.received_at).limit(limit))
    return list(conn.execute(query).scalars())
