"""Queued money movements: accept now, apply in the worker, exactly once.

Credits are applied in batches: the task of one credit also claims other queued credits that no other
transaction holds (FOR UPDATE SKIP LOCKED), locks their accounts without waiting on any, and posts every
credit whose account it holds, marks them succeeded and stores their accounts' tiers, all in one
transaction. Then it goes on with the next batches, each in its own transaction, until no credit is
queued, so a backlog is applied at the pace of the database rather than of the messages. A message is
thus a wake-up: the API merges the messages of many credits into one (worker.wakeups), and a task that
stops with credits still queued (out of time, or their accounts held) sends one more message for them.
A credit whose account another transaction holds waits for it the original way: marked running
(committed, so an attempt is counted and visible), then posted in a second transaction. An attempt of a
batched credit is counted when it is applied (a batch that fails or dies rolls back whole); a batch
failing on a database error is applied again one credit per transaction, so a bad credit cannot hold the
others back.
"""
import logging
import time
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy.exc import DBAPIError

from domain import tiers
from domain.errors import DomainError, NotFound, Unavailable
from domain.ids import looks_like, new_id
from domain.models import Caller, Entry, Operation
from domain.services import access, rate_limits, usage
from domain.services.context import Context
from domain.services.idempotency import Claim, IdempotencyService, Replay
from domain.store import audit, batch, ledger, operations
from domain.store.uow import is_unavailable

log = logging.getLogger(__name__)

APPLY_TASK = "ledger.apply_operation"
# The task that drives an operation of each kind; the relay re-sends unfinished ones by this table.
TASK_FOR_KIND = {"credit": APPLY_TASK, "x402_settle": "payments.settle_x402"}
TASK_FOR_KIND |= {"usage": APPLY_TASK, "tier_refresh": rate_limits.APPLY_TASK}
MOVES_MONEY = ("credit", "usage")  # kinds after which the account's rate-limit tier is recomputed
RETRY_BASE_SECONDS = 1.0  # an attempt stopped by a transient cause is retried after 1, 2, 4, ... seconds
RETRY_MAX_SECONDS = 300.0
BATCHED_KINDS = ("credit",)  # applied in batches, their accounts' tiers computed in the same transaction
BATCH_SIZE = 100  # operations applied by one transaction at most
DRAIN_SECONDS = 2.0  # how long one task goes on applying batches of queued credits


class OperationService:
    def __init__(self, ctx: Context, idempotency: IdempotencyService) -> None:
        self._ctx = ctx
        self._idempotency = idempotency

    def request_credit(self, caller: Caller, workspace_id: str, amount_cents: int, description: str,
                       *, claim: Claim | None = None,
                       answer: Callable[[Operation], Replay] | None = None) -> Operation | Replay:
        """Record a credit to the workspace's current default account; the worker applies it.

        With an Idempotency-Key `claim`, `answer(op)` is the response stored for replays in the same
        transaction; when the key holds a first answer already, that answer comes back instead (a Replay)
        and nothing is recorded."""
        if not caller.is_operator:
            with self._ctx.uow() as uow:
                access.refuse_user(uow.conn, caller, workspace_id, "only the operator grants credits")
        if not looks_like("ws", workspace_id):
            raise NotFound("workspace not found")
        with self._ctx.uow() as uow:
            op, created = operations.insert_for_workspace(
                uow.conn, operation_id=new_id("op"), kind="credit", caller=caller.name,
                idempotency_scope=claim.scope if claim else None, workspace_id=workspace_id,
                payload={"amountCents": amount_cents, "description": description})
            if op is None:
                raise NotFound("workspace not found")
            if claim is not None:
                replay = self._idempotency.settle_in(uow.conn, claim, answer(op))
                if replay is not None:
                    return replay  # rolled back: the key's first answer stands
            if created:
                wake = self._ctx.wake or self._ctx.enqueue
                uow.after_commit(lambda: wake(APPLY_TASK, operation_id=op.id))
            uow.commit()
        return op

    def get(self, caller: Caller, operation_id: str) -> Operation:
        with self._ctx.uow() as uow:
            op = operations.get(uow.conn, operation_id) if looks_like("op", operation_id) else None
        if op is None or not (caller.is_operator or op.caller == caller.name):
            raise NotFound("operation not found")
        return op

    def apply(self, operation_id: str) -> None:
        """Apply one operation; a credit's message also applies every credit queued by then, in batches.
        Safe to run twice: the ledger key is the operation id."""
        try:
            then = self._start(operation_id, alone=False)
        except DBAPIError as exc:  # not the database down: maybe another credit of the batch; try it alone
            if is_unavailable(exc):
                raise
            log.warning("a batch with operation %s failed (%s); applying it alone", operation_id, exc)
            then = self._start(operation_id, alone=True)
        if then is not None:
            then()

    def _start(self, operation_id: str, *, alone: bool) -> Callable[[], None] | None:
        """The first transaction of apply: what to do after it committed."""
        with self._ctx.uow() as uow:
            op = operations.get(uow.conn, operation_id, for_update=True, unfinished=True)
            if op is None:  # finished (a batch took it, or a redelivery): still a wake-up for queued credits
                return lambda: self._drain(operation_id, set())
            skipped: set[str] | None = None  # a credit: those of its batch whose accounts were held
            if op.kind in BATCHED_KINDS:
                others = [] if alone else operations.claim_queued(
                    uow.conn, kinds=BATCHED_KINDS, limit=BATCH_SIZE - 1, but=[op.id])
                finished, skipped = self._apply_batch(uow.conn, [op, *others])
                if op.id in finished:
                    uow.commit()
                    return lambda: self._drain(operation_id, skipped)
                skipped.discard(op.id)
            # Not batched, or its account is held elsewhere: counted and shown running, then applied.
            operations.set_status(uow.conn, operation_id, "running")
            uow.commit()

        def then() -> None:
            self._apply_running(operation_id)
            if skipped is not None:
                self._drain(operation_id, skipped)
        return then

    def _apply_running(self, operation_id: str) -> None:
        """The second transaction of an operation marked running: apply it (waiting on its account)."""
        with self._ctx.uow() as uow:
            op = operations.get(uow.conn, operation_id, for_update=True)
            if op.status != "running":
                return
            try:
                result = self._apply(uow.conn, op)
            except Unavailable:
                raise  # transient: the task retries it
            except DomainError as exc:  # a business refusal: recorded, never retried
                refusal = exc
            else:
                operations.set_status(uow.conn, operation_id, "succeeded", result=result)
                if op.kind in MOVES_MONEY and op.kind not in BATCHED_KINDS:
                    uow.after_commit(lambda: self._ctx.enqueue(rate_limits.RECOMPUTE_TASK,
                                                               account_id=op.billing_account_id))
                uow.commit()
                return
        self.fail(operation_id, refusal.detail, title=type(refusal).__name__)

    def _apply_batch(self, conn, claimed: list[Operation]) -> tuple[list[str], set[str]]:
        """Post the claimed (locked) credits whose accounts no other transaction holds, mark them succeeded
        (or failed, refused) and store their accounts' tiers, in this transaction: the ids finished, and
        the ids left queued because their account was held (their own messages, or later batches, apply
        them)."""
        held = batch.lock_free_accounts(conn, list({o.billing_account_id for o in claimed if o.billing_account_id}))
        skipped = {op.id for op in claimed if op.billing_account_id not in held}
        ready = [op for op in claimed if op.id not in skipped]
        posted = ledger.post_credits(conn, [self._credit(op) for op in ready], kind="credit_grant")
        results: dict[str, dict] = {}
        refused: list[str] = []
        for op in ready:
            try:  # one the batch did not post (posted before, or no account): the one-by-one way tells
                entry = posted.get(f"op:{op.id}") or self._post_credit(conn, op)
            except Unavailable:
                raise
            except DomainError as exc:  # a business refusal: recorded with the others, never retried
                operations.set_status(conn, op.id, "failed", attempt=True,
                                      error={"title": type(exc).__name__, "detail": exc.detail})
                refused.append(op.id)
                continue
            results[op.id] = _credit_result(op, entry)
        operations.succeed_many(conn, results)
        self._store_tiers(conn, {results[i]["billingAccountId"] for i in results})
        return [*results, *refused], skipped

    def _drain(self, operation_id: str, skipped: set[str]) -> None:
        """Apply the queued credits, a batch per transaction, until none is left or DRAIN_SECONDS pass;
        never those skipped already (their accounts were held). Whatever is left, a message of its own
        comes back for: the API merges the messages of many credits into one (worker.wakeups), so this
        one may be the only message that covers them."""
        deadline = time.monotonic() + DRAIN_SECONDS
        failed: set[str] = set()
        full = True
        while full and time.monotonic() < deadline:
            claimed: list[Operation] = []
            try:
                with self._ctx.uow() as uow:
                    claimed = operations.claim_queued(uow.conn, kinds=BATCHED_KINDS, limit=BATCH_SIZE,
                                                      but=[*skipped, *failed])
                    _, left = self._apply_batch(uow.conn, claimed)
                    uow.commit()
            except DBAPIError as exc:
                if is_unavailable(exc) or not claimed:
                    raise
                log.warning("a batch of queued credits failed (%s); applying them one by one", exc)
                held, refused = self._apply_one_by_one([op.id for op in claimed])
                skipped, failed = skipped | held, failed | refused
                continue
            skipped |= left
            full = len(claimed) == BATCH_SIZE
        if full:  # out of time with more queued
            self._ctx.enqueue(APPLY_TASK, operation_id=operation_id)
        if skipped:  # one message for the credits whose accounts were held; it waits on the account
            self._ctx.enqueue(APPLY_TASK, operation_id=min(skipped))

    def _apply_one_by_one(self, operation_ids: list[str]) -> tuple[set[str], set[str]]:
        """Apply each credit of a failed batch in a transaction of its own: the ids left queued because
        their account was held, and those that failed alone. These wait for the relay, whose message for
        each fails with a retry and backoff, then dead-letters it: a bad credit holds no other back."""
        held: set[str] = set()
        failed: set[str] = set()
        for operation_id in operation_ids:
            try:
                with self._ctx.uow() as uow:
                    op = operations.get(uow.conn, operation_id, for_update=True, unfinished=True)
                    if op is not None:
                        held |= self._apply_batch(uow.conn, [op])[1]
                    uow.commit()
            except DBAPIError as exc:
                if is_unavailable(exc):
                    raise
                log.warning("operation %s failed alone (%s)", operation_id, exc)
                failed.add(operation_id)
        return held, failed

    @staticmethod
    def _credit(op: Operation) -> ledger.Credit:
        return ledger.Credit(op.billing_account_id, op.payload["amountCents"], f"op:{op.id}",
                             workspace_id=op.workspace_id,
                             description=op.payload.get("description") or "Credit grant", reference=op.id)

    def _post_credit(self, conn, op: Operation) -> Entry:
        """One credit on its own (the batch statement tells a key posted before from nothing posted)."""
        credit = self._credit(op)
        return ledger.post(conn, credit.account_id, credit.amount_cents, kind="credit_grant", key=credit.key,
                           workspace_id=credit.workspace_id, description=credit.description,
                           reference=credit.reference).entry

    def _store_tiers(self, conn, account_ids: set[str]) -> None:
        """The rate-limit tiers of accounts this transaction moved money on, from its own snapshot."""
        if not account_ids:
            return
        table, decided = self._ctx.config.tiers, {}
        for account_id, (balance, paid, last_entry_id) in batch.tier_inputs(conn, list(account_ids)).items():
            decision = tiers.decide(balance, paid, table)
            decided[account_id] = (decision.tier, decision.reason, paid, balance, last_entry_id)
        batch.save_tiers(conn, decided)

    def _apply(self, conn, op: Operation) -> dict:
        if op.kind == "usage":
            return usage.apply_batch(conn, op)
        if op.kind == "tier_refresh":
            return rate_limits.refresh_in(conn, op, self._ctx)
        if op.kind == "credit":
            result = _credit_result(op, self._post_credit(conn, op))
            self._store_tiers(conn, {op.billing_account_id})
            return result
        raise NotFound(f"no handler for operations of kind {op.kind}")

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
            if op is None or op.status in ("succeeded", "failed"):
                return
            operations.set_status(uow.conn, operation_id, "failed", error={"title": title, "detail": reason})
            uow.commit()

    def relay(self, *, older_than: timedelta = timedelta(seconds=30), limit: int = 1000) -> int:
        """Re-enqueue unfinished operations whose message was lost or never sent (the outbox relay).

        A queued credit's task applies up to BATCH_SIZE queued credits, oldest first, so one message
        per BATCH_SIZE due credits re-drives them all; every other operation gets its own message."""
        with self._ctx.uow() as uow:
            due = operations.due_for_relay(uow.conn, older_than=older_than, limit=limit)
            batched = [op_id for op_id, kind, status in due if kind in BATCHED_KINDS and status == "queued"]
            sends = [(APPLY_TASK, batched[i:i + BATCH_SIZE]) for i in range(0, len(batched), BATCH_SIZE)]
            sends += [(TASK_FOR_KIND.get(kind, APPLY_TASK), [op_id]) for op_id, kind, status in due
                      if not (kind in BATCHED_KINDS and status == "queued")]
            sent = []
            for task, covered in sends:
                if not self._ctx.enqueue(task, operation_id=covered[0]):
                    break  # the broker is down: stop here, rather than wait on it for every row
                sent += covered
            if sent:
                operations.mark_enqueued(uow.conn, sent)
            uow.commit()
        return len(sent)

    def audit(self, *, stuck_after: timedelta = timedelta(minutes=10)) -> list[str]:
        with self._ctx.uow() as uow:
            return audit.problems(uow.conn, stuck_after=stuck_after)

    def audit_notices(self) -> list[str]:
        """What an operator should look at that breaks no ledger invariant (a Stripe refund beyond its checkout)."""
        with self._ctx.uow() as uow:
            return audit.notices(uow.conn)


def _backoff(attempt: int) -> float:
    return min(RETRY_BASE_SECONDS * 2 ** attempt, RETRY_MAX_SECONDS)


def _credit_result(op: Operation, entry: Entry) -> dict:
    return {"transactionId": f"txn_{entry.id}", "billingAccountId": op.billing_account_id,
            "amountCents": entry.amount_cents, "balanceAfterCents": entry.balance_after_cents}
