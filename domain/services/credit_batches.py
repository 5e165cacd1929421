"""Queued credits and hold captures, applied in batches.

The task of one credit (or capture) also claims other queued ones that no other transaction holds (FOR UPDATE
SKIP LOCKED), locks their accounts (and a capture's workspace) without waiting on any, and posts every credit
and capture whose locks it took, marks them succeeded and stores their accounts' tiers, all in one transaction.
Then it drains: the next batches, each in its own transaction, until none is queued, so a backlog is applied
at the pace of the database rather than of the messages. A message is thus a wake-up: the API merges the messages of
many credits into one (worker.wakeups), and a drain that stops with credits still queued (out of time, or
their accounts locked elsewhere) sends one more message for them. An attempt of a batched credit is
counted when it is applied (a batch that fails or dies rolls back whole); a batch failing on a database
error is applied again one credit per transaction, so a bad credit cannot hold the others back.
"""
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime

from domain import tiers
from domain.errors import DomainError, Unavailable
from domain.grants import DEFAULT_PRIORITY, Terms
from domain.models import Entry, Operation
from domain.names import EntryKind, GrantCategory, GrantSource, OperationStatus, Task
from domain.services import auto_top_ups, grants, holds
from domain.services.context import Context
from domain.store import batch, ledger, operations, usage
from domain.store.uow import Connection, StoreError, UnitOfWork

log = logging.getLogger(__name__)

BATCHED_KINDS = ("credit", holds.CAPTURE)  # applied in batches, their accounts' tiers computed in the same transaction
BATCH_SIZE = 100  # operations applied by one transaction at most
DRAIN_SECONDS = 2.0  # how long one task goes on applying batches of queued credits


@dataclass(frozen=True)
class BatchOutcome:
    finished: list[str]  # applied, or refused for good, in this transaction
    left_queued: set[str]  # their account is locked by another transaction: a later attempt applies them


@dataclass
class _Drained:
    passed_over: set[str] = field(default_factory=set)  # accounts locked elsewhere: a message of their own
    broken: set[str] = field(default_factory=set)  # failed alone on a database error: left to the relay


class CreditBatches:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def claim_others(self, conn: Connection, op: Operation) -> list[Operation]:
        """Queued credits no other transaction holds, to apply in `op`'s batch."""
        return operations.claim_queued(conn, kinds=BATCHED_KINDS, limit=BATCH_SIZE - 1, but=[op.id])

    def apply_in(self, uow: UnitOfWork, claimed: list[Operation]) -> BatchOutcome:
        """Post the claimed (locked) credits whose accounts no other transaction holds, mark them succeeded
        (or failed, refused) and store their accounts' tiers, in this transaction (a capture that leaves its
        account below its workspace's auto top-up threshold records a top-up in it too)."""
        conn = uow.conn
        locked = batch.lock_free_accounts(conn, list({o.billing_account_id for o in claimed if o.billing_account_id}))
        ready = [op for op in claimed if op.billing_account_id in locked]
        # A capture counts as its workspace's spending, which usage batches and holds serialize on: its lock is
        # taken without waiting too (a capture whose workspace is held waits for a later attempt).
        spenders = usage.lock_free_workspaces(conn, list({op.workspace_id for op in ready if op.kind == holds.CAPTURE}))
        ready = [op for op in ready if op.kind != holds.CAPTURE or op.workspace_id in spenders]
        credits = [op for op in ready if op.kind != holds.CAPTURE]
        captures = [op for op in ready if op.kind == holds.CAPTURE]
        posted = ledger.post_many(conn, [_credit(op) for op in credits], kind=EntryKind.CREDIT_GRANT)
        grants.open_grants(conn, [(posted[f"op:{op.id}"], terms_of(op)) for op in credits if f"op:{op.id}" in posted])
        results: dict[str, dict] = holds.apply_captures(conn, captures, self._ctx.ids)
        auto_top_ups.after_debits(uow, self._ctx, {(op.billing_account_id, op.workspace_id) for op in captures
                                                   if results[op.id]["capturedCents"]})
        refused: list[str] = []
        for op in credits:
            try:  # a credit the batch did not post (posted before, no account): one by one
                results[op.id] = self.result_of(op, posted.get(f"op:{op.id}") or self.post_one(conn, op))
            except Unavailable:
                raise
            except DomainError as exc:  # a business refusal: recorded with the others, never retried
                operations.set_status(conn, op.id, OperationStatus.FAILED, attempt=True,
                                      error={"title": type(exc).__name__, "detail": exc.detail})
                refused.append(op.id)
        operations.succeed_many(conn, results)
        self.store_tiers(conn, {results[i]["billingAccountId"] for i in results})
        return BatchOutcome([*results, *refused], {op.id for op in claimed} - {op.id for op in ready})

    def drain(self, woken_by: str, passed_over: set[str]) -> None:
        """Apply the queued credits, a batch per transaction, until none is left or DRAIN_SECONDS pass,
        passing over those whose accounts were locked elsewhere already. Whatever is left, a message of
        its own comes back for: the API merges the messages of many credits into one (worker.wakeups), so
        this one (`woken_by`'s) may be the only message that covers them."""
        deadline, drained, full = time.monotonic() + DRAIN_SECONDS, _Drained(set(passed_over)), True
        while full and time.monotonic() < deadline:
            claimed: list[Operation] = []
            try:
                with self._ctx.uow() as uow:
                    claimed = operations.claim_queued(uow.conn, kinds=BATCHED_KINDS, limit=BATCH_SIZE,
                                                      but=[*drained.passed_over, *drained.broken])
                    drained.passed_over |= self.apply_in(uow, claimed).left_queued
                    uow.commit()
            except StoreError as exc:  # a database that cannot be reached leaves the unit of work as Unavailable
                if not claimed:
                    raise
                log.warning("a batch of queued credits failed (%s); applying them one by one", exc)
                self._one_by_one([op.id for op in claimed], drained)
                continue
            full = len(claimed) == BATCH_SIZE
        if full:  # out of time with more queued
            self._ctx.enqueue(Task.APPLY_OPERATION, operation_id=woken_by)
        if drained.passed_over:  # one message for the credits whose accounts were locked elsewhere
            self._ctx.enqueue(Task.APPLY_OPERATION, operation_id=min(drained.passed_over))

    def _one_by_one(self, operation_ids: list[str], drained: _Drained) -> None:
        """Apply each credit of a failed batch in a transaction of its own. One that fails alone waits for
        the relay, whose message for it is retried with backoff: a bad credit holds no other back."""
        for operation_id in operation_ids:
            try:
                with self._ctx.uow() as uow:
                    op = operations.get(uow.conn, operation_id, for_update=True, unfinished=True)
                    if op is not None:
                        drained.passed_over |= self.apply_in(uow, [op]).left_queued
                    uow.commit()
            except StoreError as exc:
                log.warning("operation %s failed alone (%s)", operation_id, exc)
                drained.broken.add(operation_id)

    def post_one(self, conn: Connection, op: Operation) -> Entry:
        """One credit on its own (the batch statement tells a key posted before from nothing posted)."""
        credit = _credit(op)
        return grants.credit(conn, credit.account_id, credit.amount_cents, terms_of(op), kind=EntryKind.CREDIT_GRANT,
                             key=credit.key, workspace_id=credit.workspace_id, description=credit.description,
                             reference=credit.reference).entry

    def result_of(self, op: Operation, entry: Entry) -> dict:
        """A credit operation's result."""
        return {"transactionId": self._ctx.ids.transaction(entry.id), "billingAccountId": op.billing_account_id,
                "amountCents": entry.amount_cents, "balanceAfterCents": entry.balance_after_cents}

    def store_tiers(self, conn: Connection, account_ids: set[str]) -> None:
        store_tiers(conn, self._ctx.config.tiers, account_ids)


def store_tiers(conn: Connection, table: tiers.TierTable, account_ids: set[str]) -> None:
    """The rate-limit tiers of accounts this transaction moved money on, from its own snapshot."""
    if not account_ids:
        return
    decided = {}
    for account_id, (balance, paid, last_entry_id) in batch.tier_inputs(conn, list(account_ids)).items():
        decision = tiers.decide(balance, paid, table)
        decided[account_id] = (decision.tier, decision.reason, paid, balance, last_entry_id)
    batch.save_tiers(conn, decided)


def terms_of(op: Operation) -> Terms:
    """An operator credit's grant terms, as its request gave them (operations queued before grants: defaults)."""
    expires_at = op.payload.get("expiresAt")
    return Terms(GrantSource.OPERATOR, op.payload.get("category", GrantCategory.PROMOTIONAL),
                 op.payload.get("priority", DEFAULT_PRIORITY), datetime.fromisoformat(expires_at) if expires_at else None)


def _credit(op: Operation) -> ledger.NewEntry:
    return ledger.NewEntry(op.billing_account_id, op.payload["amountCents"], f"op:{op.id}",
                         workspace_id=op.workspace_id,
                         description=op.payload.get("description") or "Credit grant", reference=op.id)
