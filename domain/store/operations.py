"""Operation SQL: the queued intents that the worker applies and the relay re-drives.

The hot paths use fixed statements: a credit accepted is one statement on the driver (prepared, autocommitted
where the caller's connection is: domain.services.context's `single`), a batch of credits applied fixed text()
statements, which psycopg prepares on the server after a few executions.
"""
import json
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg.rows import dict_row
from sqlalchemy import Connection, func, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from domain import times, views
from domain.models import Operation
from domain.names import UNFINISHED, OperationStatus, WebhookEventType
from domain.store import idempotency, webhook_events
from domain.store.prepared import psycopg_style
from domain.store.tables import operations
from domain.store.uow import note_failed

_o = operations.c
_COLUMNS = ("id, kind, status, caller, workspace_id, billing_account_id, payload, result, error, attempts, "
            "created_at, updated_at, last_error, next_attempt_at")


COLUMNS = _COLUMNS.split(", ")


def from_row(row) -> Operation:
    """An Operation from a row of COLUMNS."""
    return Operation(**{column: row[column] for column in COLUMNS})


def insert_operation(conn: Connection, *, operation_id: str, kind: str, caller: str,
                     idempotency_scope: str | None, workspace_id: str | None,
                     billing_account_id: str | None, payload: dict,
                     trace_parent: str | None = None) -> tuple[Operation, bool]:
    """Insert; when an operation exists under this idempotency scope already, that one (False)."""
    stmt = (pg_insert(operations).values(
        id=operation_id, kind=kind, caller=caller, idempotency_scope=idempotency_scope,
        workspace_id=workspace_id, billing_account_id=billing_account_id, payload=payload,
        trace_parent=trace_parent)
        .on_conflict_do_nothing(index_elements=[_o.caller, _o.idempotency_scope],
                                index_where=_o.idempotency_scope.is_not(None))
        .returning(operations))
    row = conn.execute(stmt).mappings().first()
    if row is not None:
        return from_row(row), True
    existing = conn.execute(select(operations).where(
        _o.caller == caller, _o.idempotency_scope == idempotency_scope)).mappings().one()
    return from_row(existing), False


# The workspace's current default account is read by the INSERT itself.
_QUEUE = f"""
INSERT INTO operations (id, kind, caller, idempotency_scope, workspace_id, billing_account_id, payload, trace_parent)
SELECT :id, :kind, :caller, :scope, w.id, w.default_billing_account_id, CAST(:payload AS jsonb), :trace_parent
FROM {{source}}
RETURNING {_COLUMNS}"""
_QUEUE_FOR_WORKSPACE = psycopg_style(_QUEUE.format(source="workspaces w WHERE w.id = :workspace_id"))
# With an Idempotency-Key: the key's first answer stored, and the operation queued, only if the key is free; in the
# answer (rendered before, for as_queued()'s operation) the statement's now() stands where STATEMENT_NOW was, in
# domain.times.rfc3339's format (UTC, milliseconds cut, not rounded: to_char's MS). No row: no such workspace.
STATEMENT_NOW = datetime(1, 1, 1, tzinfo=UTC)
_NOW_RFC3339 = """to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')"""
_QUEUE_ANSWERED = psycopg_style(f"""
WITH w AS (SELECT id, default_billing_account_id FROM workspaces WHERE id = :workspace_id),
answered AS ({idempotency.answered_from("w", f"replace(:body, :statement_now, {_NOW_RFC3339})")}),
queued AS ({_QUEUE.format(source="w, answered")})
SELECT queued.* FROM w LEFT JOIN queued ON true
""")


def as_queued(*, operation_id: str, kind: str, caller: str, workspace_id: str, payload: dict) -> Operation:
    """The operation queue_for_workspace() inserts, as far as it is known before: its account is not, its times
    are STATEMENT_NOW (for an answer rendered before the statement runs)."""
    return Operation(id=operation_id, kind=kind, status=OperationStatus.QUEUED, caller=caller,
                     workspace_id=workspace_id, billing_account_id=None, payload=payload, result=None, error=None,
                     attempts=0, created_at=STATEMENT_NOW, updated_at=STATEMENT_NOW)


def queue_for_workspace(driver: psycopg.Connection, *, operation_id: str, kind: str, caller: str, workspace_id: str,
                        payload: dict, trace_parent: str | None = None,
                        answer: idempotency.FirstAnswer | None = None) -> tuple[Operation | None, bool]:
    """Queue an operation on the workspace's default account, in one statement; with `answer` (an Idempotency-Key's,
    its body rendered for as_queued()'s operation) only if the key is free, storing the answer beside it, under
    its scope. (op, True); (None, True): the key is held, nothing queued (idempotency.stored()); (None, False):
    no such workspace."""
    params = {"id": operation_id, "kind": kind, "caller": caller, "scope": None, "workspace_id": workspace_id,
              "payload": json.dumps(payload), "trace_parent": trace_parent}
    cursor = driver.cursor(row_factory=dict_row)
    if answer is None:
        row = cursor.execute(_QUEUE_FOR_WORKSPACE, params, prepare=True).fetchone()
        return (from_row(row), True) if row else (None, False)
    row = cursor.execute(_QUEUE_ANSWERED, params | answer.params() | {
        "statement_now": times.rfc3339(STATEMENT_NOW)}, prepare=True).fetchone()
    if row is None:
        return None, False
    return (from_row(row) if row["id"] else None), True


_GET = {
    (False, False): text(f"SELECT {_COLUMNS} FROM operations WHERE id = :id"),
    (True, False): text(f"SELECT {_COLUMNS} FROM operations WHERE id = :id FOR UPDATE"),
    # Only an unfinished one is locked: a finished one (a redelivered message) costs no row lock.
    (True, True): text(f"SELECT {_COLUMNS} FROM operations WHERE id = :id AND status IN ('queued', 'running') "
                       "FOR UPDATE"),
    (False, True): text(f"SELECT {_COLUMNS} FROM operations WHERE id = :id AND status IN ('queued', 'running')"),
}


def get(conn: Connection, operation_id: str, *, for_update: bool = False,
        unfinished: bool = False) -> Operation | None:
    """The operation (locked, with for_update); with unfinished, None for a finished one too."""
    row = conn.execute(_GET[for_update, unfinished], {"id": operation_id}).mappings().first()
    return from_row(row) if row else None


_TRACE_PARENT = text("SELECT trace_parent FROM operations WHERE id = :id")


def trace_parent(conn: Connection, operation_id: str) -> str | None:
    return conn.execute(_TRACE_PARENT, {"id": operation_id}).scalar()


_SET_STATUS = text(f"""
UPDATE operations SET status = :status, result = CAST(:result AS jsonb), error = CAST(:error AS jsonb),
       updated_at = now(), attempts = attempts + :attempt,
       last_error = CASE WHEN :status IN ('succeeded', 'failed') THEN NULL ELSE last_error END,
       next_attempt_at = NULL
WHERE id = :id
RETURNING {_COLUMNS}
""")


def set_status(conn: Connection, operation_id: str, status: str, *, result: dict | None = None,
               error: dict | None = None, attempt: bool | None = None) -> Operation:
    """Move an operation; `attempt` (default: when it starts running) counts one more attempt."""
    attempt = status == OperationStatus.RUNNING if attempt is None else attempt
    row = conn.execute(_SET_STATUS, {
        "id": operation_id, "status": status, "attempt": 1 if attempt else 0,
        "result": None if result is None else json.dumps(result),
        "error": None if error is None else json.dumps(error)}).mappings().one()
    op = from_row(row)
    if status == OperationStatus.FAILED:
        note_failed(conn, row["kind"])
        if op.workspace_id is not None:
            webhook_events.emit(conn, workspace_id=op.workspace_id, type=WebhookEventType.OPERATION_FAILED,
                                data=views.operation(op))
    return op


# Queued operations of the given kinds that nobody holds, oldest first (the operations_pending index).
_CLAIM_QUEUED = text(f"""
SELECT {_COLUMNS} FROM operations
WHERE status = 'queued' AND kind = ANY(CAST(:kinds AS text[]))
  AND (next_attempt_at IS NULL OR next_attempt_at <= now()) AND id <> ALL(CAST(:but AS text[]))
ORDER BY updated_at LIMIT :limit
FOR UPDATE SKIP LOCKED
""")


def claim_queued(conn: Connection, *, kinds: tuple[str, ...], limit: int, but: list[str]) -> list[Operation]:
    """Lock up to `limit` queued operations that no other transaction holds (never waiting on one)."""
    if limit <= 0:
        return []
    rows = conn.execute(_CLAIM_QUEUED, {"kinds": list(kinds), "limit": limit,
                                        "but": but}).mappings()
    return [from_row(row) for row in rows]


# Every row updated by one statement; each attempt counted, as a 'running' mark would have. The results come as
# one JSON object (operation id -> result): psycopg dumps a text[] of JSON strings element by element, escaping
# each one's quotes with a regex, which cost more than the rest of a batch's Python.
_SUCCEED_MANY = text("""
UPDATE operations o SET status = 'succeeded', result = v.result, error = NULL,
       attempts = o.attempts + 1, updated_at = now(), last_error = NULL, next_attempt_at = NULL
FROM jsonb_each(CAST(:results AS jsonb)) AS v(id, result)
WHERE o.id = v.id
""")


def succeed_many(conn: Connection, results: dict[str, dict]) -> None:
    """Mark operations succeeded with their results, counting the attempt that applied them."""
    if results:
        conn.execute(_SUCCEED_MANY, {"results": json.dumps(results)})


# One more attempt counted (a running one was counted when it started), the cause shown, a retry due after
# base * 2^(attempts - 1) seconds, at most max; a finished operation is left alone.
_BACK_TO_QUEUE = text("""
UPDATE operations SET status = 'queued', last_error = CAST(:error AS jsonb), updated_at = now(),
       attempts = attempts + CASE WHEN status = 'running' THEN 0 ELSE 1 END,
       next_attempt_at = now() + make_interval(secs => LEAST(
           :base * power(2, GREATEST(attempts + CASE WHEN status = 'running' THEN 0 ELSE 1 END - 1, 0)), :max))
WHERE id = :id AND status IN ('queued', 'running')
RETURNING EXTRACT(EPOCH FROM next_attempt_at - now())
""")


def back_to_queue(conn: Connection, operation_id: str, error: dict, *, base_seconds: float,
                  max_seconds: float) -> float | None:
    """Queue an unfinished operation again after a failed attempt: seconds until its retry is due."""
    error = error | {"at": times.rfc3339(datetime.now(UTC))}
    delay = conn.execute(_BACK_TO_QUEUE, {"id": operation_id, "error": json.dumps(error), "base": base_seconds,
                                          "max": max_seconds}).scalar()
    return None if delay is None else float(delay)


def mark_enqueued(conn: Connection, operation_ids: list[str]) -> None:
    conn.execute(update(operations).where(_o.id.in_(operation_ids)).values(enqueued_at=func.now()))


def due_for_relay(conn: Connection, *, older_than: timedelta,
                  limit: int) -> list[tuple[str, str, str, str | None]]:
    """(id, kind, status, trace_parent) of unfinished operations not enqueued (or not touched) for older_than."""
    cutoff = func.now() - older_than
    query = (select(_o.id, _o.kind, _o.status, _o.trace_parent).where(
        _o.status.in_(UNFINISHED), _o.updated_at < cutoff,
        (_o.enqueued_at.is_(None)) | (_o.enqueued_at < cutoff),
        (_o.next_attempt_at.is_(None)) | (_o.next_attempt_at <= func.now()))
        .order_by(_o.updated_at).limit(limit).with_for_update(skip_locked=True))
    return [(row.id, row.kind, row.status, row.trace_parent) for row in conn.execute(query)]


def stuck(conn: Connection, *, older_than: timedelta) -> list[str]:
    query = select(_o.id).where(_o.status.in_(UNFINISHED),
                                _o.updated_at < func.now() - older_than)
    return list(conn.execute(query).scalars())
