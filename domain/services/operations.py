"""Queued money movements: accept now, apply in the worker, exactly once."""
import logging
from datetime import timedelta

from domain.errors import DomainError, Forbidden, NotFound
from domain.ids import looks_like, new_id
from domain.models import Caller, Operation
from domain.services import access, rate_limits, usage
from domain.services.context import Context
from domain.store import audit, ledger, operations

log = logging.getLogger(__name__)

APPLY_TASK = "ledger.apply_operation"
# The task that drives an operation of each kind; the relay re-sends unfinished ones by this table.
TASK_FOR_KIND = {"credit": APPLY_TASK, "x402_settle": "payments.settle_x402"}
TASK_FOR_KIND |= {"usage": APPLY_TASK, "tier_refresh": rate_limits.APPLY_TASK}
MOVES_MONEY = ("credit", "usage")  # kinds after which the account's rate-limit tier is recomputed
MAX_ATTEMPTS = 10


class OperationService:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def request_credit(self, caller: Caller, workspace_id: str, amount_cents: int, description: str,
                       idempotency_key: str | None) -> Operation:
        """Record a credit to the workspace's current default account; the worker applies it."""
        if not caller.is_operator:
            raise Forbidden("only the operator grants credits")
        with self._ctx.uow() as uow:
            workspace = access.workspace(uow.conn, caller, workspace_id).workspace
            op, created = operations.insert_operation(
                uow.conn, operation_id=new_id("op"), kind="credit", caller=caller.name,
                idempotency_key=idempotency_key, workspace_id=workspace.id,
                billing_account_id=workspace.default_billing_account_id,
                payload={"amountCents": amount_cents, "description": description})
            if created:
                uow.after_commit(lambda: self._ctx.enqueue(APPLY_TASK, operation_id=op.id))
            uow.commit()
        return op

    def get(self, caller: Caller, operation_id: str) -> Operation:
        with self._ctx.uow() as uow:
            op = operations.get(uow.conn, operation_id) if looks_like("op", operation_id) else None
        if op is None or not (caller.is_operator or op.caller == caller.name):
            raise NotFound("operation not found")
        return op

    def apply(self, operation_id: str) -> None:
        """Apply one operation. Safe to run twice: the ledger key is the operation id."""
        with self._ctx.uow() as uow:
            op = operations.get(uow.conn, operation_id, for_update=True)
            if op is None or op.status in ("succeeded", "failed"):
                return  # a redelivery of finished work
            op = operations.set_status(uow.conn, operation_id, "running")
            uow.commit()
        if op.attempts > MAX_ATTEMPTS:
            self.fail(operation_id, f"gave up after {MAX_ATTEMPTS} attempts")
            return
        with self._ctx.uow() as uow:
            op = operations.get(uow.conn, operation_id, for_update=True)
            if op.status != "running":
                return
            try:
                result = self._apply(uow.conn, op)
            except DomainError as exc:  # a business refusal: recorded, never retried
                refusal = exc
            else:
                operations.set_status(uow.conn, operation_id, "succeeded", result=result)
                if op.kind in MOVES_MONEY:
                    uow.after_commit(lambda: self._ctx.enqueue(rate_limits.RECOMPUTE_TASK,
                                                               account_id=op.billing_account_id))
                uow.commit()
                return
        self.fail(operation_id, refusal.detail, title=type(refusal).__name__)

    def _apply(self, conn, op: Operation) -> dict:
        if op.kind == "usage":
            return usage.apply_batch(conn, op)
        if op.kind == "tier_refresh":
            return rate_limits.refresh_in(conn, op, self._ctx)
        if op.kind == "credit":
            posting = ledger.post(conn, op.billing_account_id, op.payload["amountCents"],
                                  kind="credit_grant", key=f"op:{op.id}", workspace_id=op.workspace_id,
                                  description=op.payload.get("description") or "Credit grant",
                                  reference=op.id)
            return {"transactionId": f"txn_{posting.entry.id}", "billingAccountId": op.billing_account_id,
                    "amountCents": posting.entry.amount_cents,
                    "balanceAfterCents": posting.entry.balance_after_cents}
        raise NotFound(f"no handler for operations of kind {op.kind}")

    def fail(self, operation_id: str, reason: str, *, title: str = "operation failed") -> None:
        """Record a final failure (a business refusal, or retries exhausted)."""
        with self._ctx.uow() as uow:
            op = operations.get(uow.conn, operation_id, for_update=True)
            if op is None or op.status in ("succeeded", "failed"):
                return
            operations.set_status(uow.conn, operation_id, "failed", error={"title": title, "detail": reason})
            uow.commit()

    def relay(self, *, older_than: timedelta = timedelta(seconds=30), limit: int = 1000) -> int:
        """Re-enqueue unfinished operations whose message was lost or never sent (the outbox relay)."""
        with self._ctx.uow() as uow:
            due = operations.due_for_relay(uow.conn, older_than=older_than, limit=limit)
            sent = []
            for op_id, kind in due:
                if not self._ctx.enqueue(TASK_FOR_KIND.get(kind, APPLY_TASK), operation_id=op_id):
                    break  # the broker is down: stop here, rather than wait on it for every row
                sent.append(op_id)
            if sent:
                operations.mark_enqueued(uow.conn, sent)
            uow.commit()
        return len(sent)

    def audit(self, *, stuck_after: timedelta = timedelta(minutes=10)) -> list[str]:
        with self._ctx.uow() as uow:
            return audit.problems(uow.conn, stuck_after=stuck_after)
