"""Stored Stripe events: one row per Stripe event id, however often it is delivered."""
from datetime import timedelta

import psycopg
from psycopg.types.json import Jsonb
from sqlalchemy import Connection, func, select, text

from domain.store.tables import stripe_events

_e = stripe_events.c


_STORE = "INSERT INTO stripe_events (id, type, payload) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING RETURNING id"


def store(driver: psycopg.Connection, event_id: str, event_type: str, payload: dict) -> bool:
    """Store an event once per id, in one prepared statement on the driver; False when it was stored before."""
    return driver.execute(_STORE, (event_id, event_type, Jsonb(payload)), prepare=True).fetchone() is not None


def get_for_update(conn: Connection, event_id: str):
    return conn.execute(select(stripe_events).where(_e.id == event_id).with_for_update()).mappings().first()


_CLAIM = text("""
SELECT id, type, payload, received_at FROM stripe_events
WHERE processed_at IS NULL AND id <> ALL(CAST(:but AS text[]))
ORDER BY received_at LIMIT :limit FOR UPDATE SKIP LOCKED
""")


def claim_unprocessed(conn: Connection, *, limit: int, but: list[str]) -> list:
    """Lock up to `limit` events not applied yet (but those named) that no other transaction holds, oldest first."""
    return list(conn.execute(_CLAIM, {"limit": limit, "but": but}).mappings())


_MARK = text("""
UPDATE stripe_events e SET processed_at = now(), outcome = v.outcome
FROM unnest(CAST(:ids AS text[]), CAST(:outcomes AS text[])) AS v(id, outcome) WHERE e.id = v.id
""")


def mark_processed(conn: Connection, outcomes: dict[str, str]) -> None:
    """Record each event (id -> outcome) applied."""
    if outcomes:
        conn.execute(_MARK, {"ids": list(outcomes), "outcomes": list(outcomes.values())})


def unprocessed(conn: Connection, *, older_than: timedelta, limit: int = 500) -> list[str]:
    query = (select(_e.id).where(_e.processed_at.is_(None), _e.received_at < func.now() - older_than)
             .order_by(_e.received_at).limit(limit))
    return list(conn.execute(query).scalars())
