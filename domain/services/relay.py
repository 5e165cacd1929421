"""The outbox relay: every unfinished operation is in PostgreSQL; this sends its message again when the
first was lost or never sent (the broker down at accept time, a killed worker, a retry come due)."""
from datetime import timedelta

from domain.names import OperationStatus, Task
from domain.services.context import Context
from domain.services.credit_batches import BATCH_SIZE, BATCHED_KINDS
from domain.store import operations

# The task that drives an operation of each kind.
TASK_FOR_KIND = {"credit": Task.APPLY_OPERATION, "usage": Task.APPLY_OPERATION,
                 "tier_refresh": Task.APPLY_TIER_OPERATION, "x402_settle": Task.SETTLE_X402}


class OutboxRelay:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def send_due(self, *, older_than: timedelta = timedelta(seconds=30), limit: int = 1000) -> int:
        """Send the message of each unfinished operation not sent (or touched) for `older_than` and due for
        its next attempt; the number of operations covered.

        A queued credit's task applies up to BATCH_SIZE queued credits, oldest first, so one message per
        BATCH_SIZE due credits re-drives them all; every other operation gets its own message."""
        with self._ctx.uow() as uow:
            due = operations.due_for_relay(uow.conn, older_than=older_than, limit=limit)
            in_batches = [(op_id, parent) for op_id, kind, status, parent in due if _batched(kind, status)]
            sends = [(Task.APPLY_OPERATION, in_batches[i:i + BATCH_SIZE]) for i in range(0, len(in_batches), BATCH_SIZE)]
            sends += [(TASK_FOR_KIND.get(kind, Task.APPLY_OPERATION), [(op_id, parent)])
                      for op_id, kind, status, parent in due if not _batched(kind, status)]
            sent = []
            for task, covered in sends:
                if not self._send(task, covered):
                    break  # the broker is down: stop here, rather than wait on it for every row
                sent += [op_id for op_id, _ in covered]
            if sent:
                operations.mark_enqueued(uow.conn, sent)
            uow.commit()
        return len(sent)

    def _send(self, task: str, covered: list[tuple[str, str | None]]) -> bool:
        """One message for the operations `covered` (id, stored traceparent), naming the first: sent in the trace
        of the request that accepted it, linked to the others' traces."""
        (first, parent), others = covered[0], [other for _, other in covered[1:] if other]
        with self._ctx.resume_trace(f"relay {task}", parent, others):
            return self._ctx.enqueue(task, operation_id=first)


def _batched(kind: str, status: str) -> bool:
    return kind in BATCHED_KINDS and status == OperationStatus.QUEUED
