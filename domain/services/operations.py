"""Queued money movements: accept now, apply in the worker, exactly once, retried until applied.

A credit is accepted in one statement with its Idempotency-Key answer, and applied with a batch of
queued credits (domain.services.credit_batches); usage batches and tier refreshes are applied one by one.
An operation ends failed only for a business refusal; an attempt stopped for any other cause goes back to
the queue with backoff (retry_later), and the relay (domain.services.relay) re-sends what is left behind.
"""
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime

from domain.errors import DomainError, NotFound, Unavailable
from domain.grants import Terms
from domain.ids import looks_like, new_id
from domain.models import Caller, Operation
from domain.names import FINISHED, GrantSource, OperationStatus, Task
from domain.services import access, auto_top_ups, grants, holds, rate_limits, usage
from domain.services.context import Context
from domain.services.credit_batches import BATCHED_KINDS, CreditBatches
from domain.services.idempotency import Claim, IdempotencyService, Replay
from domain.store import operations
from domain.store.uow import StoreError, transient_cause

log = logging.getLogger(__name__)

MOVES_MONEY = ("credit", "usage", holds.CAPTURE)  # kinds after which the account's rate-limit tier is recomputed
DEBITS = ("usage", holds.CAPTURE)  # kinds whose debit may leave the balance below a workspace's auto top-up threshold
RETRY_BASE_SECONDS = 1.0  # an attempt stopped by a transient cause is retried after 1, 2, 4, ... seconds
RETRY_MAX_SECONDS = 300.0


class OperationService:
    def __init__(self, ctx: Context, idempotency: IdempotencyService, batches: CreditBatches) -> None:
        self._ctx = ctx
        self._idempotency = idempotency
        self._batches = batches

    def request_credit(self, caller: Caller, workspace_id: str, amount_cents: int, description: str,
                       *, claim: Claim | None = None, terms: Terms | None = None) -> Operation | Replay:
        """Record a credit to the workspace's current default account; the worker applies it, opening a grant
        on `terms` (category, priority, expiresAt; the source is the operator's).

        One statement, autocommitted: with an Idempotency-Key `claim` it stores the key's answer too, so both
        commit or neither; when the key holds a first answer already, that answer comes back instead (a Replay)
        and nothing is recorded."""
        if not caller.is_operator:
            with self._ctx.uow() as uow:
                access.refuse_user(uow.conn, caller, workspace_id, "only the operator grants credits")
        if not looks_like("ws", workspace_id):
            raise NotFound("workspace not found")
        terms = terms or Terms(GrantSource.OPERATOR)
        grants.expires_in_future(terms.expires_at, datetime.now(UTC))
        new = {"operation_id": new_id("op"), "kind": "credit", "caller": caller.name, "workspace_id": workspace_id,
               "payload": {"amountCents": amount_cents, "description": description, "category": terms.category,
                           "priority": terms.priority,
                           "expiresAt": terms.expires_at.astimezone(UTC).isoformat() if terms.expires_at else None}}
        answer = self._idempotency.first_answer(claim, operations.as_queued(**new)) if claim else None
        with self._ctx.single() as driver:
            op, found = operations.queue_for_workspace(driver, **new, trace_parent=self._ctx.trace_parent(),
                                                       answer=answer)
        if not found:
            raise NotFound("workspace not found")
        if op is None:
            return self._idempotency.replay_for(claim)  # the key's first answer stands
        (self._ctx.wake or self._ctx.enqueue)(Task.APPLY_OPERATION, operation_id=op.id)
        return op

    def get(self, caller: Caller, operation_id: str) -> Operation:
        with self._ctx.uow() as uow:
            op = operations.get(uow.conn, operation_id) if looks_like("op", operation_id) else None
        if op is None or not (caller.is_operator or op.caller == caller.name):
            raise NotFound("operation not found")
        return op

    def trace_parent_of(self, operation_id: str) -> str | None:
        """The W3C traceparent of the request that accepted the operation; None when it was not traced."""
        with self._ctx.uow() as uow:
            return operations.trace_parent(uow.conn, operation_id)

    def apply(self, operation_id: str) -> None:
        """Apply one operation; a credit's message also applies every credit queued by then, in batches
        (domain.services.credit_batches). Safe to run twice: the ledger key is the operation id."""
        try:
            step = self._first_transaction(operation_id, alone=False)
        except StoreError as exc:  # not the database down (Unavailable): maybe another credit of the batch
            log.warning("a batch with operation %s failed (%s); applying it alone", operation_id, exc)
            step = self._first_transaction(operation_id, alone=True)
        if step.apply_alone:
            self._apply_running(operation_id)
        if step.drain:
            self._batches.drain(operation_id, step.left_queued)

    def _first_transaction(self, operation_id: str, *, alone: bool) -> "FirstStep":
        """Apply a credit with its batch; an operation that is not batched, or whose account another
        transaction holds, is marked running (committed: the attempt is counted and visible) to be applied
        in a transaction of its own."""
        with self._ctx.uow() as uow:
            op = operations.get(uow.conn, operation_id, for_update=True, unfinished=True)
            if op is None:  # finished (a batch took it, or a redelivery): still a wake-up for queued credits
                return FirstStep(apply_alone=False, drain=True)
            if op.kind not in BATCHED_KINDS:
                operations.set_status(uow.conn, operation_id, OperationStatus.RUNNING)
                uow.commit()
                return FirstStep(apply_alone=True, drain=False)
            outcome = self._batches.apply_in(uow, [op, *([] if alone else self._batches.claim_others(uow.conn, op))])
            applied = op.id in outcome.finished
            if not applied:
                operations.set_status(uow.conn, operation_id, OperationStatus.RUNNING)
            uow.commit()
        return FirstStep(apply_alone=not applied, drain=True, left_queued=outcome.left_queued - {op.id})

    def _apply_running(self, operation_id: str) -> None:
        """The second transaction of an operation marked running: apply it (waiting on its account)."""
        with self._ctx.uow() as uow:
            op = operations.get(uow.conn, operation_id, for_update=True)
            if op.status != OperationStatus.RUNNING:
                return
            try:
                result = self._apply(uow.conn, op)
            except Unavailable:
                raise  # transient: the task retries it
            except DomainError as exc:  # a business refusal: recorded, never retried
                refusal = exc
            else:
                operations.set_status(uow.conn, operation_id, OperationStatus.SUCCEEDED, result=result)
                if op.kind in DEBITS and (result.get("debitedCents") or result.get("capturedCents")):
                    auto_top_ups.after_debit(uow, self._ctx, op.billing_account_id, op.workspace_id)
                if op.kind in MOVES_MONEY and op.kind not in BATCHED_KINDS:
                    uow.after_commit(lambda: self._ctx.enqueue(Task.RECOMPUTE_TIER,
                                                               account_id=op.billing_account_id))
                uow.commit()
                return
        self.fail(operation_id, refusal.detail, title=type(refusal).__name__)

    def _apply(self, conn, op: Operation) -> dict:
        """Dispatch by kind."""
        if op.kind == "usage":
            return usage.apply_batch(conn, op, self._ctx.ids)
        if op.kind == "tier_refresh":
            return rate_limits.refresh_in(conn, op, self._ctx)
        if op.kind == holds.CAPTURE:
            result = holds.apply_capture(conn, op, self._ctx.ids)
        elif op.kind == "credit":
            result = self._batches.result_of(op, self._batches.post_one(conn, op))
        else:
            raise NotFound(f"no handler for operations of kind {op.kind}")
        self._batches.store_tiers(conn, {op.billing_account_id})
        return result

    def retry_later(self, operation_id: str, cause: str, *, fallback_attempt: int = 0) -> float:
        """An attempt stopped for a transient cause (a lock held elsewhere, a time limit, the database
        down, a killed worker): put the operation back in the queue with its attempt counted and the cause
        shown as lastError; the seconds until it is tried again (backoff). Never marks it failed: only a
        business refusal does that. When the database cannot record it either, the backoff follows
        `fallback_attempt` and the relay re-sends it later."""
        try:
            with self._ctx.uow() as uow:
                delay = operations.back_to_queue(uow.conn, operation_id, {"title": "retrying", "detail": cause},
                                                 base_seconds=RETRY_BASE_SECONDS, max_seconds=RETRY_MAX_SECONDS)
                uow.commit()
        except DomainError:  # the database is down too
            return _backoff(fallback_attempt)
        return _backoff(fallback_attempt) if delay is None else delay  # None: finished (the wake-up failed)

    def fail(self, operation_id: str, reason: str, *, title: str = "operation failed") -> None:
        """Record a final failure: a business refusal."""
        with self._ctx.uow() as uow:
            op = operations.get(uow.conn, operation_id, for_update=True)
            if op is None or op.status in FINISHED:
                return
            operations.set_status(uow.conn, operation_id, OperationStatus.FAILED, error={"title": title, "detail": reason})
            uow.commit()


@dataclass(frozen=True)
class FirstStep:
    """What apply does once its first transaction committed."""
    apply_alone: bool  # marked running: applied in a transaction of its own, waiting on its account
    drain: bool  # a credit's message is also a wake-up for the credits queued meanwhile
    left_queued: set[str] = field(default_factory=set)  # credits of its batch whose accounts were held


def _backoff(attempt: int) -> float:
    return min(RETRY_BASE_SECONDS * 2 ** attempt, RETRY_MAX_SECONDS)


def stop_cause(exc: BaseException) -> str:
    """Why an attempt stopped, in words fit for an Operation's lastError (never the exception's own text)."""
    return transient_cause(exc)
