"""Idempotency-Key: the first response to a (caller, key) is replayed for 24 hours."""
from dataclasses import dataclass

from domain.errors import Conflict
from domain.services.context import Context
from domain.store import idempotency


@dataclass(frozen=True)
class Replay:
    status: int
    body: str
    headers: dict


class IdempotencyService:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def begin(self, caller: str, key: str, fingerprint: str) -> Replay | None:
        """Claim the key (None: go ahead), or the stored first response to replay."""
        with self._ctx.uow() as uow:
            stored = idempotency.claim(uow.conn, caller, key, fingerprint)
            uow.commit()
        if stored is None:
            return None
        if stored.fingerprint != fingerprint:
            raise Conflict("this Idempotency-Key was used with a different request")
        if stored.status is None:
            raise Conflict("a request with this Idempotency-Key is still in progress; retry shortly")
        return Replay(stored.status, stored.body, stored.headers or {})

    def finish(self, caller: str, key: str, status: int, body: str, headers: dict) -> None:
        with self._ctx.uow() as uow:
            idempotency.complete(uow.conn, caller, key, status, body, headers)
            uow.commit()

    def abandon(self, caller: str, key: str) -> None:
        """Forget a claim whose request failed before it could answer, so a retry may run."""
        with self._ctx.uow() as uow:
            idempotency.release(uow.conn, caller, key)
            uow.commit()

    def purge(self) -> int:
        with self._ctx.uow() as uow:
            count = idempotency.purge_expired(uow.conn)
            uow.commit()
        return count
