"""Idempotency-Key: one flow for every keyed request, over HTTP or the CLI.

claim → run → finish (store the answer) or release (a 5xx, or an answer that asks for the same request
again); a claimed key answers the next request with its stored first answer (a replay), or 409 when
another request used it or it is still running. A request whose work is one statement (a queued credit)
does not claim first: that statement stores its answer too (first_answer), so the key, the work and the
answer commit together or not at all.

Everything a keyed request creates is unique per claim *scope*, not per raw key: after the window
(BILLING_IDEMPOTENCY_TTL_SECONDS) the key gets a new scope and a new request under it is processed as
new, while a retry of a request that died or answered 5xx keeps the scope and so finds what its first
attempt created (the same operation, the same checkout and so the same Stripe session).
"""
import hashlib
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from domain.errors import Conflict
from domain.ids import new_id
from domain.services.context import Context
from domain.store import idempotency
from domain.store.idempotency import StoredRequest
from domain.store.uow import Connection


@dataclass(frozen=True)
class Replay:
    status: int
    body: str
    headers: dict


@dataclass(frozen=True)
class KeyedRequest:
    """A request that carries an Idempotency-Key; fingerprint() tells requests apart."""
    caller: str
    key: str
    fingerprint: str


@dataclass(frozen=True)
class Claim:
    """The right to run a keyed request: what it creates, it creates under `scope`. A leased claim has a
    `token`. One whose answer is stored with the request's work has none, and carries the adapter's `render`:
    the answer (status, body, headers) for what the request creates, stored by the same statement."""
    request: KeyedRequest
    scope: str
    token: str | None = None
    render: Callable[[object], Replay] | None = None


def fingerprint(method: str, path: str, body: object) -> str:
    """Method, route with its path ids, and the body as canonical JSON (key order and spacing ignored)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256("\n".join([method.upper(), path, canonical]).encode()).hexdigest()


# Retry-After of a 409 for a key whose first request still runs: that request usually ends within it, and the
# retry gets its answer. The lease (up to a minute) is how long a dead process's claim lasts: a client told to
# wait that long would wait a minute for an answer ready in milliseconds.
IN_PROGRESS_RETRY_AFTER = 1


def new_scope() -> str:
    return new_id("idem")  # time-ordered, as the (caller, idempotency_scope) indexes would have them


def _replay(stored: StoredRequest, fingerprint_: str) -> Replay:
    if stored.fingerprint != fingerprint_:
        raise Conflict("this Idempotency-Key was used with a different request")
    if stored.status is None:
        raise Conflict("a request with this Idempotency-Key is still in progress; retry shortly",
                       retry_after=IN_PROGRESS_RETRY_AFTER)
    return Replay(stored.status, stored.body, stored.headers or {})


class IdempotencyService:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._ttl = ctx.config.idempotency_ttl_seconds
        self._lease = ctx.config.idempotency_lease_seconds

    def claim(self, request: KeyedRequest) -> Claim | Replay:
        """Lease the key to this request (a Claim), or the stored first answer to send instead."""
        token = secrets.token_hex(16)
        with self._ctx.uow() as uow:
            held = idempotency.claim(uow.conn, request.caller, request.key, request.fingerprint, new_scope(),
                                     ttl_seconds=self._ttl, lease_seconds=self._lease, token=token)
            uow.commit()
        if isinstance(held, str):
            return Claim(request, held, token)
        return _replay(held, request.fingerprint)

    def unclaimed(self, request: KeyedRequest, render: Callable[[object], Replay]) -> Claim:
        """A claim for a request that stores its answer with its work (first_answer): nothing stored yet."""
        return Claim(request, new_scope(), render=render)

    def first_answer(self, claim: Claim, created: object) -> idempotency.FirstAnswer:
        """The answer for what the request creates (`created`, as far as it is known before), for the statement
        that creates it to store as the key's first answer (idempotency.answered_from), if the key is free."""
        r, answer = claim.request, claim.render(created)
        return idempotency.FirstAnswer(r.caller, r.key, r.fingerprint, claim.scope, self._ttl, answer.status,
                                       answer.body, answer.headers)

    def replay_for(self, claim: Claim) -> Replay:
        """The stored answer to send instead, the key being held (first_answer stored nothing). Conflict: another
        request holds it."""
        with self._ctx.read() as uow:
            return _replay(idempotency.stored(uow.conn, claim.request.caller, claim.request.key),
                           claim.request.fingerprint)

    def _store_in(self, conn: Connection, claim: Claim, answer: Replay) -> Replay | None:
        r = claim.request
        held = idempotency.claim(conn, r.caller, r.key, r.fingerprint, claim.scope, ttl_seconds=self._ttl,
                                 status=answer.status, body=answer.body, headers=answer.headers)
        return None if isinstance(held, str) else _replay(held, r.fingerprint)

    def settle(self, claim: Claim, answer: Replay) -> Replay | None:
        """Store the answer as the key's first answer (None: send it), or the stored answer to send instead:
        for an answer the request's work did not store (a refusal raised before its statement could)."""
        with self._ctx.uow() as uow:
            replay = self._store_in(uow.conn, claim, answer)
            uow.commit()
        return replay

    def finish(self, claim: Claim, answer: Replay) -> None:
        """Store the answer of a leased claim; a retry that took the key over (lease ran out) wins."""
        with self._ctx.uow() as uow:
            r = claim.request
            idempotency.finish(uow.conn, r.caller, r.key, claim.token, answer.status, answer.body, answer.headers)
            uow.commit()

    def release(self, claim: Claim) -> None:
        """Give the key back without an answer (5xx, 402): the retry runs anew, under the same scope."""
        with self._ctx.uow() as uow:
            idempotency.release(uow.conn, claim.request.caller, claim.request.key, claim.token)
            uow.commit()

    def purge(self) -> int:
        with self._ctx.uow() as uow:
            count = idempotency.purge_expired(uow.conn, self._ttl)
            uow.commit()
        return count
