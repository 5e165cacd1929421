"""Idempotency-key SQL: one row per (caller, key) holding a claim, then the request's first answer.

A row is free for a new request once its window has passed (`created_at` older than the TTL), or when
it holds no answer and no live lease (the request answered 5xx and was released, or its process died).
A request taking a free row over keeps the row's scope only when it is a retry of the same request
(same fingerprint, window not passed): what the first attempt created under that scope (an operation,
a checkout) is then found again instead of created twice. Any other request gets a new scope.
"""
import json
from dataclasses import dataclass

from sqlalchemy import Connection, text


@dataclass(frozen=True)
class StoredRequest:
    fingerprint: str
    status: int | None  # None while the first request is still in flight
    body: str | None
    headers: dict | None


_FREE = """(k.created_at < now() - make_interval(secs => :ttl)
           OR (k.response_status IS NULL AND (k.lease_expires_at IS NULL OR k.lease_expires_at < now())))"""
_RETRY = "(k.fingerprint = EXCLUDED.fingerprint AND k.created_at >= now() - make_interval(secs => :ttl))"

# Take the key if it is free: insert its row, or take a free row over. No row back: the key is held.
_TAKE = f"""
INSERT INTO idempotency_keys AS k (caller, key, fingerprint, scope, response_status, response_body,
                                   response_headers, lease_token, lease_expires_at)
{{row}}
ON CONFLICT (caller, key) DO UPDATE
SET scope = CASE WHEN {_RETRY} THEN k.scope ELSE EXCLUDED.scope END,
    fingerprint = EXCLUDED.fingerprint, response_status = EXCLUDED.response_status,
    response_body = EXCLUDED.response_body, response_headers = EXCLUDED.response_headers,
    lease_token = EXCLUDED.lease_token, lease_expires_at = EXCLUDED.lease_expires_at, created_at = now()
WHERE {_FREE}
RETURNING k.scope"""
# Claim the key, or store a first answer outright (status given, no lease).
_CLAIM = text(_TAKE.format(row="""VALUES (:caller, :key, :fingerprint, :scope, :status, :body, CAST(:headers AS jsonb),
        :token, CASE WHEN CAST(:token AS text) IS NULL THEN NULL ELSE now() + make_interval(secs => :lease) END)"""))
_STORED = text("""
SELECT fingerprint, response_status, response_body, response_headers
FROM idempotency_keys WHERE caller = :caller AND key = :key
""")


@dataclass(frozen=True)
class FirstAnswer:
    """A keyed request's answer, stored by the statement that does the request's work (answered_from)."""
    caller: str
    key: str
    fingerprint: str
    scope: str
    ttl_seconds: int
    status: int
    body: str
    headers: dict

    def params(self) -> dict:
        return {"caller": self.caller, "key": self.key, "fingerprint": self.fingerprint, "scope": self.scope,
                "ttl": self.ttl_seconds, "status": self.status, "body": self.body, "headers": json.dumps(self.headers)}


def answered_from(source: str, body: str = ":body") -> str:
    """SQL storing a FirstAnswer (its params(); `body`, the SQL of its body) under its key if the key is free, once
    per row of `source`, one at most (none: nothing stored): for a statement that does the request's work and
    stores its answer at once. It returns the scope as claim() does; no row when the key is held (stored())."""
    return _TAKE.format(row=f"SELECT :caller, :key, :fingerprint, :scope, :status, {body}, CAST(:headers AS jsonb), "
                            f"NULL, NULL FROM {source}")


def claim(conn: Connection, caller: str, key: str, fingerprint: str, scope: str, *, ttl_seconds: int,
          lease_seconds: int = 0, token: str | None = None, status: int | None = None, body: str | None = None,
          headers: dict | None = None) -> str | StoredRequest:
    """Take the key: the scope to create under (`scope`, or the one a retry keeps), or what holds it.

    With `token` the claim is leased to one running request; with `status` it is the finished answer
    itself (a request answered in this very transaction)."""
    claimed = conn.execute(_CLAIM, {
        "caller": caller, "key": key, "fingerprint": fingerprint, "scope": scope, "ttl": ttl_seconds,
        "lease": lease_seconds, "token": token, "status": status, "body": body,
        "headers": None if headers is None else json.dumps(headers)}).scalar()
    return claimed if claimed is not None else stored(conn, caller, key)


def stored(conn: Connection, caller: str, key: str) -> StoredRequest:
    """What holds the key."""
    row = conn.execute(_STORED, {"caller": caller, "key": key}).mappings().one()
    return StoredRequest(row["fingerprint"], row["response_status"], row["response_body"], row["response_headers"])


_FINISH = text("""
UPDATE idempotency_keys SET response_status = :status, response_body = :body,
       response_headers = CAST(:headers AS jsonb), lease_token = NULL, lease_expires_at = NULL
WHERE caller = :caller AND key = :key AND lease_token = :token
""")
# The row (and its scope) stays for a retry of the same request; without a lease it is free.
_RELEASE = text("""
UPDATE idempotency_keys SET lease_token = NULL, lease_expires_at = NULL
WHERE caller = :caller AND key = :key AND lease_token = :token
""")


def finish(conn: Connection, caller: str, key: str, token: str, status: int, body: str, headers: dict) -> bool:
    """Store the answer if this request still holds the lease (False: a retry took the key over)."""
    return conn.execute(_FINISH, {"caller": caller, "key": key, "token": token, "status": status, "body": body,
                                  "headers": json.dumps(headers)}).rowcount == 1


def release(conn: Connection, caller: str, key: str, token: str) -> None:
    conn.execute(_RELEASE, {"caller": caller, "key": key, "token": token})


_PURGE = text("""
DELETE FROM idempotency_keys
WHERE created_at < now() - make_interval(secs => :ttl) AND (lease_expires_at IS NULL OR lease_expires_at < now())
""")


def purge_expired(conn: Connection, ttl_seconds: int) -> int:
    return conn.execute(_PURGE, {"ttl": ttl_seconds}).rowcount
