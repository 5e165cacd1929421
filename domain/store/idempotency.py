"""Idempotency-key SQL: the first response of a request, kept 24 hours for replay."""
import json
from dataclasses import dataclass

from sqlalchemy import Connection, delete, func, text, update

from domain.store.tables import idempotency_keys

_k = idempotency_keys.c
KEEP = text("interval '24 hours'")


@dataclass(frozen=True)
class StoredRequest:
    fingerprint: str
    status: int | None  # None while the first request is still in flight
    body: str | None
    headers: dict | None


# Claim the key, or store a first answer outright: a row older than 24 hours counts as free and is
# taken over by the same statement. No row back: the key holds an answer (or a claim) already.
_CLAIM = text("""
INSERT INTO idempotency_keys AS k (caller, key, fingerprint, response_status, response_body, response_headers)
VALUES (:caller, :key, :fingerprint, :status, :body, CAST(:headers AS jsonb))
ON CONFLICT (caller, key) DO UPDATE
SET fingerprint = EXCLUDED.fingerprint, response_status = EXCLUDED.response_status,
    response_body = EXCLUDED.response_body, response_headers = EXCLUDED.response_headers, created_at = now()
WHERE k.created_at < now() - interval '24 hours'
RETURNING true
""")
_STORED = text("SELECT fingerprint, response_status, response_body, response_headers FROM idempotency_keys "
               "WHERE caller = :caller AND key = :key")


def claim(conn: Connection, caller: str, key: str, fingerprint: str, *, status: int | None = None,
          body: str | None = None, headers: dict | None = None) -> StoredRequest | None:
    """Claim the key for a new request (None), or return what an earlier request left.

    With `status`, the claim is the finished answer itself (a request answered in this transaction)."""
    claimed = conn.execute(_CLAIM, {
        "caller": caller, "key": key, "fingerprint": fingerprint, "status": status, "body": body,
        "headers": None if headers is None else json.dumps(headers)}).first()
    if claimed is not None:
        return None
    row = conn.execute(_STORED, {"caller": caller, "key": key}).mappings().one()
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
