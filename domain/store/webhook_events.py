"""The webhook events outbox: events recorded in the transaction of the change that causes them.

emit() and the ledger's postings (note_entries) only remember events on the connection: no round trip.
The unit of work writes them with one statement just before it commits (flush), and only those of
workspaces with an endpoint subscribed to the type, each with its deliveries; a transaction that rolls
back writes none. The ledger's entries give `transaction.created`, and `balance.low` / `balance.depleted`
on a debit crossing the threshold downward, for every workspace whose default account moved.
"""
import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, text

from domain import times
from domain.ids import SQL_HEX
from domain.names import WebhookEventType as Event

PENDING = "billing.webhook_events"  # Connection.info key: what this transaction emitted, in order


@dataclass(frozen=True)
class _Given:
    workspace_id: str
    type: str
    data: str  # JSON


@dataclass(frozen=True)
class _Moved:
    account_id: str
    entry_id: int
    amount_cents: int
    balance_after_cents: int


def emit(conn: Connection, *, workspace_id: str, type: str, data: dict) -> None:
    """Record an event of the workspace in the caller's transaction (`conn`, its unit of work's connection):
    delivered to the workspace's endpoints subscribed to `type` when the unit of work commits, to none if it
    rolls back. `data` is the payload's object, JSON-serializable (datetimes become RFC 3339). Costs no
    round trip; the commit writes every event of the transaction in one statement."""
    conn.info.setdefault(PENDING, []).append(_Given(workspace_id, type, json.dumps(data, default=_json)))


def note_entries(conn: Connection, entries: list[tuple[str, int, int, int]]) -> None:
    """Entries this transaction wrote, as (account id, entry id, amount cents, balance after cents): each a
    transaction.created event, and a balance event when a debit crosses a threshold downward."""
    conn.info.setdefault(PENDING, []).extend(_Moved(*entry) for entry in entries)


def discard(conn: Connection) -> None:
    conn.info.pop(PENDING, None)


def _json(value: object) -> str:
    if isinstance(value, datetime):
        return times.rfc3339(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


# Events of the workspaces listening (a live, enabled endpoint subscribed to the type), in the order they were
# emitted, and a delivery for each endpoint subscribed. Only the endpoints of the workspaces concerned are read:
# those named by emit() and those whose default account an entry moved.
_FLUSH = text(f"""
WITH given AS (
    SELECT g.workspace_id, g.type, g.data, CAST(NULL AS text) AS account_id, CAST(NULL AS bigint) AS entry_id, g.ord
    FROM json_to_recordset(CAST(:given AS json)) AS g(workspace_id text, type text, data jsonb, ord int)
), moved AS (
    SELECT * FROM unnest(CAST(:accounts AS text[]), CAST(:entries AS bigint[]), CAST(:amounts AS bigint[]),
                         CAST(:afters AS bigint[]), CAST(:moved_ord AS int[]))
                  AS m(account_id, entry_id, amount, after, ord)
), concerned AS (
    SELECT w.id AS workspace_id, w.default_billing_account_id AS account_id FROM workspaces w
    WHERE w.default_billing_account_id = ANY(CAST(:accounts AS text[]))
), listening AS MATERIALIZED (
    SELECT e.id, e.workspace_id, e.events FROM webhook_endpoints e
    WHERE e.workspace_id IN (SELECT workspace_id FROM given UNION SELECT workspace_id FROM concerned)
      AND e.enabled AND e.deleted_at IS NULL
), derived AS (
    SELECT c.workspace_id, t.type, t.data, m.account_id, m.entry_id, m.ord
    FROM moved m JOIN concerned c ON c.account_id = m.account_id
    LEFT JOIN billing_settings s ON s.workspace_id = c.workspace_id
    CROSS JOIN LATERAL (VALUES
        ('{Event.TRANSACTION_CREATED}', '{{}}'::jsonb, true),
        ('{Event.BALANCE_LOW}', jsonb_build_object('billingAccountId', m.account_id, 'balanceCents', m.after,
                                           'previousBalanceCents', m.after - m.amount,
                                           'lowBalanceCents', s.low_balance_cents),
         m.amount < 0 AND m.after < s.low_balance_cents AND m.after - m.amount >= s.low_balance_cents),
        ('{Event.BALANCE_DEPLETED}', jsonb_build_object('billingAccountId', m.account_id, 'balanceCents', m.after,
                                                'previousBalanceCents', m.after - m.amount),
         m.amount < 0 AND m.after <= 0 AND m.after - m.amount > 0)
    ) AS t(type, data, due)
    WHERE t.due AND c.workspace_id IN (SELECT workspace_id FROM listening)
), wanted AS (
    SELECT 'evt_' || {SQL_HEX} AS id, e.*
    FROM (SELECT * FROM given UNION ALL SELECT * FROM derived) e
    WHERE EXISTS (SELECT 1 FROM listening l WHERE l.workspace_id = e.workspace_id AND e.type = ANY(l.events))
), events AS (
    INSERT INTO webhook_events (id, workspace_id, type, data, billing_account_id, entry_id, created_at)
    SELECT id, workspace_id, type, data, account_id, entry_id, clock_timestamp() FROM wanted ORDER BY ord
    RETURNING id, workspace_id, type
)
INSERT INTO webhook_deliveries (id, endpoint_id, event_id, next_attempt_at)
SELECT 'dlv_' || {SQL_HEX}, l.id, e.id, now()
FROM events e JOIN listening l ON l.workspace_id = e.workspace_id AND e.type = ANY(l.events)
RETURNING id
""")


def _given_json(given: list[tuple[int, _Given]]) -> str:
    """The emitted events as one JSON array, each event's data (JSON already) put in as it is: a text[] of JSON
    texts, each needing quotes, costs psycopg a regex per element."""
    return "[" + ",".join(f'{{"workspace_id":{json.dumps(e.workspace_id)},"type":{json.dumps(e.type)},'
                          f'"data":{e.data},"ord":{i}}}' for i, e in given) + "]"


def flush(conn: Connection) -> int:
    """Write what this transaction emitted (the unit of work calls this before it commits): the number of
    deliveries it created, 0 when no endpoint listens."""
    pending = conn.info.pop(PENDING, None)
    if not pending:
        return 0
    given = [(i, e) for i, e in enumerate(pending) if isinstance(e, _Given)]
    moved = [(i, e) for i, e in enumerate(pending) if isinstance(e, _Moved)]
    rows = conn.execute(_FLUSH, {
        "given": _given_json(given),
        "accounts": [e.account_id for _, e in moved], "entries": [e.entry_id for _, e in moved],
        "amounts": [e.amount_cents for _, e in moved], "afters": [e.balance_after_cents for _, e in moved],
        "moved_ord": [i for i, _ in moved]}).all()
    return len(rows)
