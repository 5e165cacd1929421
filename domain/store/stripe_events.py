"""Stored Stripe events: one row per Stripe event id, however often it is delivered."""
import json
from datetime import timedelta

import psycopg
from sqlalchemy import Connection, func, select, text

from domain.store.tables import stripe_events

_e = stripe_events.c


# The events of concurrent deliveries, as one JSON parameter (domain.store.group_commit); an id twice among them is
# stored once, as for two deliveries one after the other.
_STORE_MANY = """
INSERT INTO stripe_events (id, type, payload)
SELECT v.id, v.type, v.payload FROM json_to_recordset(CAST(%s AS json)) AS v(id text, type text, payload jsonb)
ON CONFLICT DO NOTHING RETURNING id
"""


def store(driver: psycopg.Connection, event_id: str, event_type: str, payload: dict) -> bool:
    """Store an event once per id; False when it was stored before."""
    return store_many(driver, [(event_id, event_type, payload)])[0]


def store_many(driver: psycopg.Connection, events: list[tuple[str, str, dict]]) -> list[bool]:
    """Store (id, type, payload) events, each once per id, in one prepared statement on the driver; for each,
    False when it was stored before (or by an event before it in the list)."""
    rows = json.dumps([{"id": event_id, "type": event_type, "payload": payload}
                       for event_id, event_type, payload in events])
    stored = {row[0] for row in driver.execute(_STORE_MANY, (rows,), prepare=True)}
    first = {}
    for n, (event_id, _, _) in enumerate(events):
        first.setdefault(event_id, n)
    return [event_id in stored and first[event_id] == n for n, (event_id, _, _) in enumerate(events)]


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
