"""Usage SQL: a batch of usage debits in one transaction, and the usage overview of a workspace."""
import json
from datetime import UTC, datetime, timedelta

import psycopg
from sqlalchemy import Connection, text

from domain.errors import NotFound
from domain.names import EntryKind
from domain.store import prepared, webhook_events
from domain.store.uow import note_postings

# Usage batches of one workspace run one at a time (their eventIds share a key space), then the
# account row is locked: the same order everywhere, so two batches cannot deadlock.
_LOCK = text("SELECT pg_advisory_xact_lock(hashtextextended('usage:' || CAST(:workspace_id AS text), 0))")
_TRY_LOCKS = text("SELECT w FROM unnest(CAST(:ids AS text[])) AS w "
                  "WHERE pg_try_advisory_xact_lock(hashtextextended('usage:' || w, 0))")
_ACCOUNT = text("SELECT balance_cents, held_cents FROM billing_accounts WHERE id = :account_id FOR NO KEY UPDATE")
# An eventId is looked for on the account debited and on every account linked to the workspace: one sent
# again after the workspace changed its default account is still a duplicate. Each (account, key) is one probe of
# (billing_account_id, idempotency_key), the ledger's unique key, whatever the planner thinks of the account's
# size: the LIMIT keeps the lookup per key (with the account alone as its condition, a hot account's whole
# history was read for every batch). The workspace lock above serializes them.
_PRIOR = text("""
SELECT e.idempotency_key, e.id, e.metric, e.quantity, -e.amount_cents AS amount_cents
FROM (SELECT billing_account_id FROM workspace_billing_accounts WHERE workspace_id = :workspace_id
      UNION SELECT :account_id) AS a(id)
CROSS JOIN json_array_elements_text(CAST(:keys AS json)) AS k(key)
CROSS JOIN LATERAL (SELECT * FROM ledger_entries e WHERE e.billing_account_id = a.id AND e.idempotency_key = k.key
                    LIMIT 1) AS e
""")

# Every planned entry in one INSERT from one JSON document (ids follow the batch order, so the balance
# chain holds), and the cached balance moved by exactly what went in. A key inserted meanwhile fails the
# whole statement: the transaction rolls back and the task's retry sees it as a duplicate. The entries of a
# batch share one created_at, as the batch draws from the grants once: a balance as of an instant sees the
# whole batch or none of it.
_INSERT = text("""
WITH inserted AS (
    INSERT INTO ledger_entries (billing_account_id, workspace_id, kind, amount_cents, balance_after_cents,
                                description, reference, idempotency_key, metric, quantity, occurred_at,
                                created_at)
    SELECT :account_id, :workspace_id, 'usage', -u.amount, u.balance_after, u.description, u.event_id,
           u.key, u.metric, u.quantity, u.occurred_at, statement_timestamp()
    FROM json_to_recordset(CAST(:rows AS json))
         AS u(ord int, amount bigint, balance_after bigint, description text, event_id text, key text,
              metric text, quantity bigint, occurred_at timestamptz)
    ORDER BY u.ord
    RETURNING id, idempotency_key, amount_cents, balance_after_cents, metric, quantity, occurred_at
), rolled AS (
    INSERT INTO usage_rollups AS r (billing_account_id, workspace_id, hour, metric, usage_cents, quantity, events)
    SELECT :account_id, :workspace_id, date_trunc('hour', occurred_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC',
           metric, -SUM(amount_cents), SUM(quantity), COUNT(*)
    FROM inserted GROUP BY 3, 4
    ON CONFLICT (billing_account_id, workspace_id, hour, metric) DO UPDATE SET usage_cents = r.usage_cents + EXCLUDED.usage_cents,
        quantity = r.quantity + EXCLUDED.quantity, events = r.events + EXCLUDED.events
), moved AS (
    UPDATE billing_accounts SET balance_cents = balance_cents + (SELECT SUM(amount_cents) FROM inserted)
    WHERE id = :account_id RETURNING balance_cents
)
SELECT i.idempotency_key, i.id, i.amount_cents, i.balance_after_cents,
       (SELECT balance_cents FROM moved) AS balance_cents
FROM inserted i ORDER BY i.id
""")


def _iso(value: datetime) -> str:
    return value.isoformat()


def key(workspace_id: str, event_id: str) -> str:
    return f"usage:{workspace_id}:{event_id}"


def lock_workspace(conn: Connection, workspace_id: str) -> None:
    """Serialize what the workspace spends: usage batches, new holds and captures (store.spend)."""
    conn.execute(_LOCK, {"workspace_id": workspace_id})


def lock_free_workspaces(conn: Connection, workspace_ids: list[str]) -> set[str]:
    """lock_workspace for those of the workspaces no other transaction holds, without waiting; the ids locked."""
    if not workspace_ids:
        return set()
    return set(conn.execute(_TRY_LOCKS, {"ids": sorted(workspace_ids)}).scalars())


def lock_for_batch(conn: Connection, workspace_id: str, account_id: str) -> tuple[int, int]:
    """Serialize the workspace's usage batches, lock the account; its balance and what its holds reserve."""
    lock_workspace(conn, workspace_id)
    row = conn.execute(_ACCOUNT, {"account_id": account_id}).first()
    if row is None:
        raise NotFound("billing account not found")
    return int(row.balance_cents), int(row.held_cents)


def prior(conn: Connection, workspace_id: str, account_id: str,
          keys: list[str]) -> dict[str, tuple[int, str, int, int]]:
    """key -> (entry id, metric, quantity, amountCents) for keys already in the ledger of the account or of
    another account linked to the workspace."""
    rows = conn.execute(_PRIOR, {"workspace_id": workspace_id, "account_id": account_id, "keys": json.dumps(keys)})
    return {r.idempotency_key: (r.id, r.metric, r.quantity, r.amount_cents) for r in rows}


def insert(conn: Connection, account_id: str, workspace_id: str, rows: list[dict]) -> tuple[dict[str, int], int]:
    """Insert planned debits (dicts of key, event_id, metric, quantity, amount, balance_after,
    occurred_at, description); (key -> entry id, balance after)."""
    document = json.dumps([row | {"ord": i} for i, row in enumerate(rows)], default=_iso)
    params = {"account_id": account_id, "workspace_id": workspace_id, "rows": document}
    result = conn.execute(_INSERT, params).all()
    note_postings(conn, [(EntryKind.USAGE, -row["amount"]) for row in rows])
    webhook_events.note_entries(conn, [(account_id, r.id, r.amount_cents, r.balance_after_cents) for r in result])
    return {r.idempotency_key: r.id for r in result}, int(result[-1].balance_cents)


# The overview: whole hours of the window from the hourly rollups, the partial hours at its two edges
# from the ledger's usage index; aggregated per (period, metric), and generate_series supplies every
# period of the window (UTC), so empty ones come back as zeros. One statement with the caller's row
# (domain.store.prepared's WORKSPACE_FOR_KEY or _FOR_USER): that row first, NULL in the overview's columns;
# then the overview's rows, NULL in the caller's. The overview is computed only for a caller who may read
# the workspace, a member or the operator (a one-time filter): a refused caller costs its row alone.
# It runs on its generic plan, right for every window as the edges are under an hour each, planned once per
# connection. Planned with the values, PostgreSQL took each edge for the few entries it holds, found the generic
# plan (each edge a default share of the ledger: 5,000 of bench/usage_overview's 1M entries) dearer, and planned
# the statement afresh on every execution: 0.8 ms there beside 1.1 ms of running it. So the values that weigh on
# the plan are read through scalar subqueries, which no plan looks into: a custom plan costs what the generic one
# does, and after its first five executions PostgreSQL keeps the generic plan (tests/api/test_usage.py checks).
_OVERVIEW = """
WITH caller(user_id, workspace_id, role) AS ({caller}),
may_read AS (SELECT FROM caller WHERE workspace_id IS NOT NULL AND (user_id IS NULL OR role IS NOT NULL)),
hours AS (
    SELECT r.hour AT TIME ZONE 'UTC' AS hour, r.metric, r.usage_cents AS cents, r.quantity, r.events
    FROM usage_rollups r
    WHERE r.workspace_id = (SELECT CAST(:workspace_id AS text)) AND r.hour >= (SELECT :whole_from)
      AND r.hour < (SELECT :whole_to)
    UNION ALL
    SELECT date_trunc('hour', e.occurred_at AT TIME ZONE 'UTC'), e.metric, -e.amount_cents, e.quantity, 1
    FROM ledger_entries e
    WHERE e.workspace_id = (SELECT CAST(:workspace_id AS text)) AND e.kind = 'usage'
      AND ((e.occurred_at >= (SELECT :since) AND e.occurred_at < (SELECT :whole_from))
           OR (e.occurred_at >= (SELECT :whole_to) AND e.occurred_at < (SELECT :until)))
), agg AS MATERIALIZED (
    SELECT date_trunc(:unit, hour) AS period, metric, SUM(cents) AS cents, SUM(quantity) AS quantity,
           SUM(events) AS events
    FROM hours GROUP BY 1, 2
), periods AS (
    SELECT gs AS period FROM generate_series(date_trunc(:unit, CAST(:since AS timestamptz) AT TIME ZONE 'UTC'),
                                             CAST(:until AS timestamptz) AT TIME ZONE 'UTC' - interval '1 microsecond',
                                             (SELECT CAST(:step AS interval))) gs
)
SELECT caller.*, NULL AS part, NULL AS period_start, NULL AS metric, NULL AS cents, NULL AS quantity,
       NULL AS events
FROM caller
UNION ALL
SELECT {no_caller}, 'period', p.period AT TIME ZONE 'UTC', NULL, CAST(COALESCE(SUM(a.cents), 0) AS bigint),
       CAST(COALESCE(SUM(a.quantity), 0) AS bigint), CAST(COALESCE(SUM(a.events), 0) AS bigint)
FROM periods p LEFT JOIN agg a ON a.period = p.period WHERE EXISTS (SELECT FROM may_read) GROUP BY p.period
UNION ALL
SELECT {no_caller}, 'metric', NULL, a.metric, CAST(SUM(a.cents) AS bigint), CAST(SUM(a.quantity) AS bigint),
       CAST(SUM(a.events) AS bigint)
FROM agg a WHERE EXISTS (SELECT FROM may_read) GROUP BY a.metric
ORDER BY part DESC, period_start, cents DESC, metric
"""
_NO_CALLER = ", ".join(["NULL"] * prepared.CALLER_COLUMNS)
_OVERVIEW_FOR = tuple(prepared.psycopg_style(_OVERVIEW).format(caller=caller, no_caller=_NO_CALLER)
                      for caller in (prepared.WORKSPACE_FOR_KEY, prepared.WORKSPACE_FOR_USER))
Series = list[tuple[datetime, int, int, int]]
Metrics = list[tuple[str, int, int]]


def _hour(t: datetime) -> datetime:
    return t.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _whole_hours(since: datetime, until: datetime) -> tuple[datetime, datetime]:
    """[first, end) of the whole UTC hours inside [since, until); (until, until) when there is none, so the
    ledger answers for all of it. Rounding since up only when a whole hour follows keeps year 9999 in range."""
    first, end = _hour(since), _hour(until)
    if first < since:
        if first >= end:
            return until, until
        first += timedelta(hours=1)
    return first, end


def overview(conn: psycopg.Connection, workspace_id: str, since: datetime, until: datetime, unit: str, *,
             key_hash: bytes | None = None,
             user_id: str | None = None) -> tuple[prepared.WorkspaceRead | None, Series, Metrics]:
    """The caller's read of the workspace as domain.store.prepared.workspace_account gives it (by key_hash, or
    by user_id: None for the operator), and the overview, empty unless that caller may read the workspace:
    per period (start, cents, quantity, events) and per metric (metric, quantity, cents). One prepared
    statement, one round trip."""
    whole_from, whole_to = _whole_hours(since, until)
    sql, params = prepared.caller_statement(_OVERVIEW_FOR, {
        "workspace_id": workspace_id, "account_id": None, "since": since, "until": until, "whole_from": whole_from,
        "whole_to": whole_to, "unit": unit, "step": f"1 {unit}"}, key_hash, user_id)
    rows = conn.execute(sql, params, prepare=True).fetchall()
    series, metrics = [], []
    for part, start, metric, cents, quantity, events in (row[prepared.CALLER_COLUMNS:] for row in rows[1:]):
        if part == "period":
            series.append((start, cents, quantity, events))
        else:
            metrics.append((metric, quantity, cents))
    return prepared.caller_read(rows[0] if rows else None, key_hash, user_id), series, metrics
