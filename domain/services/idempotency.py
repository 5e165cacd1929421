"""Idempotency-Key: the first response to a (caller, key) is replayed for 24 hours.

Two ways to hold a key. Most requests claim it in a transaction of its own (begin), do their work, then
store their answer (finish). A request whose work is one transaction (a queued credit) stores its answer
in that same transaction instead (settle_in): the key, the work and the answer commit together or not at
all, and a concurrent request with the same key waits on the key's row, then replays the answer.
"""
from dataclasses import dataclass

from sqlalchemy import Connection

from domain.errors import Conflict
from domain.services.context import Context
from domain.store import idempotency
from domain.store.idempotency import StoredRequest


@dataclass(frozen=True)
class Replay:
    status: int
    body: str
    headers: dict


@dataclass(frozen=True)
class Claim:
    """An Idempotency-Key request that its service settles inside its own transaction."""
    caller: str
    key: str
    fingerprint: str


def _replay(stored: StoredRequest, fingerprint: str) -> Replay:
    if stored.fingerprint != fingerprint:
        raise Conflict("this Idempotency-Key was used with a different request")
    if stored.status is None:
        raise Conflict("a request with this Idempotency-Key is still in progress; retry shortly")
    return Replay(stored.status, stored.body, stored.headers or {})


def settle_in(conn: Connection, claim: Claim, answer: Replay) -> Replay | None:
    """In the caller's transaction: store `answer` as the key's first answer (None: commit and send it),
    or the stored first answer to send instead (roll back). Conflict: another request used the key."""
    stored = idempotency.claim(conn, claim.caller, claim.key, claim.fingerprint,
                               status=answer.status, body=answer.body, headers=answer.headers)
    return None if stored is None else _replay(stored, claim.fingerprint)


class IdempotencyService:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def begin(self, caller: str, key: str, fingerprint: str) -> Replay | None:
        """Claim the key (None: go ahead), or the stored first response to replay."""
        with self._ctx.uow() as uow:
            stored = idempotency.claim(uow.conn, caller, key, fingerprint)
            uow.commit()
        return None if stored is None else _replay(stored, fingerprint)

    def finish(self, caller: str, key: str, status: int, body: str, headers: dict) -> None:
        with self._ctx.uow() as uow:
            idempotency.complete(uow.conn, caller, key, status, body, headers)
            uow.commit()

    def settle(self, claim: Claim, answer: Replay) -> Replay | None:
        """settle_in, in a transaction of its own: for an answer the service did not store (a refusal)."""
        with self._ctx.uow() as uow:
            replay = settle_in(uow.conn, claim, answer)
            uow.commit()
        return replay

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
