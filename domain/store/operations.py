"""Operation SQL: the queued intents that the worker applies and the relay re-drives."""
from datetime import timedelta

from sqlalchemy import Connection, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from domain.models import Operation
from domain.store.tables import operations

_o = operations.c


def _operation(row) -> Operation:
    return Operation(id=row["id"], kind=row["kind"], status=row["status"], caller=row["caller"],
                     workspace_id=row["workspace_id"], billing_account_id=row["billing_account_id"],
                     payload=row["payload"], result=row["result"], error=row["error"], attempts=row["attempts"],
                     created_at=row["created_at"], updated_at=row["updated_at"])


def insert_operation(conn: Connection, *, operation_id: str, kind: str, caller: str,
                     idempotency_key: str | None, workspace_id: str | None,
                     billing_account_id: str | None, payload: dict) -> tuple[Operation, bool]:
    """Insert; with an idempotency key already used by this caller, the existing one (False)."""
    stmt = (pg_insert(operations).values(
        id=operation_id, kind=kind, caller=caller, idempotency_key=idempotency_key,
        workspace_id=workspace_id, billing_account_id=billing_account_id, payload=payload)
        .on_conflict_do_nothing(constraint="operations_caller_idempotency_key")
        .returning(operations))
    row = conn.execute(stmt).mappings().first()
    if row is not None:
        return _operation(row), True
    existing = conn.execute(select(operations).where(
        _o.caller == caller, _o.idempotency_key == idempotency_key)).mappings().one()
    return _operation(existing), False


def get(conn: Connection, operation_id: str, *, for_update: bool = False) -> Operation | None:
    query = select(operations).where(_o.id == operation_id)
    if for_update:
        query = query.with_for_update()
    row = conn.execute(query).mappings().first()
    return _operation(row) if row else None


def set_status(conn: Connection, operation_id: str, status: str, *, result: dict | None = None,
               error: dict | None = None) -> Operation:
    row = conn.execute(update(operations).where(_o.id == operation_id).values(
        status=status, result=result, error=error, updated_at=func.now(),
        attempts=_o.attempts + (1 if status == "running" else 0)).returning(operations)).mappings().one()
    return _operation(row)


def mark_enqueued(conn: Connection, operation_ids: list[str]) -> None:
    conn.execute(update(operations).where(_o.id.in_(operation_ids)).values(enqueued_at=func.now()))


def due_for_relay(conn: Connection, *, older_than: timedelta, limit: int) -> list[tuple[str, str]]:
    """(id, kind) of unfinished operations not enqueued (or not touched) for older_than."""
    cutoff = func.now() - older_than
    query = (select(_o.id, _o.kind).where(
        _o.status.in_(("queued", "running")), _o.updated_at < cutoff,
        (_o.enqueued_at.is_(None)) | (_o.enqueued_at < cutoff))
        .order_by(_o.updated_at).limit(limit).with_for_update(skip_locked=True))
    return [(row.id, row.kind) for row in conn.execute(query)]


def stuck(conn: Connection, *, older_than: timedelta) -> list[str]:
    query = select(_o.id).where(_o.status.in_(("queued", "running")),
                                _o.updated_at < func.now() - older_than)
    return list(conn.execute(query).scalars())


