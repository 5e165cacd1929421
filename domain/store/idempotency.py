"""Idempotency-key SQL: the first response of a request, kept 24 hours for replay."""
from dataclasses import dataclass

from sqlalchemy import Connection, delete, func, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from domain.store.tables import idempotency_keys

_k = idempotency_keys.c
KEEP = text("interval '24 hours'")


@dataclass(frozen=True)
class StoredRequest:
    fingerprint: str
    status: int | None  # None while the first request is still in flight
    body: str | None
    headers: dict | None


def claim(conn: Connection, caller: str, key: str, fingerprint: str) -> StoredRequest | None:
    """Claim the key for a new request (None), or return what an earlier request left."""
    conn.execute(delete(idempotency_keys).where(
        _k.caller == caller, _k.key == key, _k.created_at < func.now() - KEEP))
    stmt = (pg_insert(idempotency_keys).values(caller=caller, key=key, fingerprint=fingerprint)
            .on_conflict_do_nothing().returning(_k.key))
    if conn.execute(stmt).first() is not None:
        return None
    row = conn.execute(select(idempotency_keys).where(_k.caller == caller, _k.key == key)).mappings().one()
    return StoredRequest(row["fingerprint"], row["response_status"], row["response_body"],
                         row["response_headers"])


def complete(conn: Connection, caller: str, key: str, status: int, body: str, headers: dict) -> None:
    conn.execute(update(idempotency_keys).where(_k.caller == caller, _k.key == key).values(
        response_status=status, response_body=body, response_headers=headers))


def release(conn: Connection, caller: str, key: str) -> None:
    conn.execute(delete(idempotency_keys).where(_k.caller == caller, _k.key == key,
                                                _k.response_status.is_(None)))


def purge_expired(conn: Connection) -> int:
    return conn.execute(delete(idempotency_keys).where(_k.created_at < func.now() - KEEP)).rowcount
