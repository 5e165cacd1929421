"""Holds: reserve money at once (an agent must know before it starts), capture what the work cost later (queued
like every money movement: the capture is debited as usage once, the rest released), release, or let it expire.

A hold moves no money: it lowers the account's availableCents (billing_accounts.held_cents), which new holds and
usage batches see, so concurrent holds never reserve more than is available. A hold counts against its
workspace's monthly spend limit while it reserves; what its capture debits counts as spent.
"""
import logging
from datetime import UTC, datetime

from domain.errors import Conflict, InvalidInput, NotAffordable, NotFound
from domain.ids import looks_like, new_id
from domain.models import Caller, Hold, Operation, Page
from domain.names import EntryKind, HoldStatus, Task
from domain.public_ids import PublicIds
from domain.services import access, grants, keyset
from domain.services.context import Context
from domain.store import holds, ledger, operations, spend, usage
from domain.store.uow import Connection

log = logging.getLogger(__name__)

CAPTURE = "hold_capture"  # the operation kind of a capture
EXPIRE_BATCH = 500


class HoldService:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def create(self, caller: Caller, workspace_id: str, amount_cents: int, *, seconds: int, description: str,
               reference: str | None, idempotency_scope: str | None) -> Hold:
        """Reserve on the workspace's default account now, or refuse (402): what is available, or the spend
        limit, does not cover it. Under an Idempotency-Key, a retry gets the hold its first attempt made."""
        self._operator_only(caller, workspace_id, "only the operator places holds")
        new = {"hold_id": new_id("hold"), "workspace_id": workspace_id, "amount_cents": amount_cents,
               "seconds": seconds, "description": description, "reference": reference, "created_by": caller.name,
               "scope": idempotency_scope}
        if idempotency_scope is None:  # one statement, unless the workspace has a spend limit
            with self._ctx.single() as driver:
                if hold := holds.reserve(driver, **new, limited=False):
                    return hold
        with self._ctx.uow() as uow:
            if idempotency_scope and (made := holds.by_scope(uow.conn, caller.name, idempotency_scope)):
                return made
            usage.lock_workspace(uow.conn, workspace_id)
            hold = holds.reserve(uow.driver, **new, limited=True)
            if hold is None:
                self._refusal(uow.conn, workspace_id, amount_cents)
            uow.commit()
        return hold

    @staticmethod
    def _refusal(conn: Connection, workspace_id: str, amount_cents: int):
        available = holds.available(conn, workspace_id)
        if available is None:
            raise NotFound("workspace not found")
        if available < amount_cents:
            raise NotAffordable(f"available {available} cents cannot cover a hold of {amount_cents} cents",
                                problem="insufficient-funds")
        room = spend.standing(conn, workspace_id).room()
        raise NotAffordable(f"{room} cents left of the workspace's monthly spend limit cannot cover a hold of "
                            f"{amount_cents} cents", problem="spend-limit")

    def capture(self, caller: Caller, workspace_id: str, hold_id: str, amount_cents: int) -> Operation:
        """Queue the capture of `amount_cents` (0: a release); capturing again answers the first capture's
        operation, whatever its amount."""
        self._operator_only(caller, workspace_id, "only the operator captures holds")
        if not looks_like("hold", hold_id):
            raise NotFound("hold not found")
        with self._ctx.single() as driver:  # one statement: the hold marked, its capture queued
            op = holds.queue_capture(driver, workspace_id, hold_id, amount_cents, operation_id=new_id("op"),
                                     kind=CAPTURE, caller=caller.name, trace_parent=self._ctx.trace_parent())
        if op is None:  # not queued: no such hold, captured before, or it cannot be
            with self._ctx.read() as uow:
                hold = self._hold(uow.conn, workspace_id, hold_id)
                if hold.capture_operation_id is not None:
                    return operations.get(uow.conn, hold.capture_operation_id)
            self._capturable(hold, amount_cents)
            raise Conflict("the hold expired")  # between the statement's clock and this one's
        (self._ctx.wake or self._ctx.enqueue)(Task.APPLY_OPERATION, operation_id=op.id)  # applied with the credits
        return op

    @staticmethod
    def _capturable(hold: Hold, amount_cents: int) -> None:
        if amount_cents > hold.amount_cents:
            raise InvalidInput(f"must not be more than the {hold.amount_cents} cents held", field="amountCents")
        if hold.status != HoldStatus.ACTIVE:
            raise Conflict(f"the hold is {hold.status}")
        if hold.expires_at <= datetime.now(UTC):
            raise Conflict("the hold expired")

    def release(self, caller: Caller, workspace_id: str, hold_id: str) -> Hold:
        """Stop an active hold reserving; one released or expired already is answered as it is; a captured one
        cannot be released (409)."""
        self._operator_only(caller, workspace_id, "only the operator releases holds")
        with self._ctx.uow() as uow:
            hold = self._hold(uow.conn, workspace_id, hold_id)
            ledger.lock_account(uow.conn, hold.billing_account_id)
            released = holds.settle(uow.conn, hold.billing_account_id, hold.id, HoldStatus.RELEASED)
            hold = released or self._hold(uow.conn, workspace_id, hold_id)
            if hold.status == HoldStatus.CAPTURED:
                raise Conflict("the hold was captured; a capture cannot be released")
            uow.commit()
        return hold

    def get(self, caller: Caller, workspace_id: str, hold_id: str) -> Hold:
        with self._ctx.read() as uow:
            access.workspace(uow.conn, caller, workspace_id)
            return self._hold(uow.conn, workspace_id, hold_id)

    def page(self, caller: Caller, workspace_id: str, *, limit: int, cursor: str | None, status: str | None) -> Page:
        before = keyset.position(cursor) if cursor else None
        with self._ctx.read() as uow:
            access.workspace(uow.conn, caller, workspace_id)
            found = holds.page(uow.conn, workspace_id, limit=limit + 1, status=status, before=before)
        return keyset.page(found, limit)

    def expire_due(self, limit: int = EXPIRE_BATCH) -> int:
        """Release every active hold past its expiresAt (a beat job), each under its account's lock; how many."""
        with self._ctx.uow() as uow:
            due = holds.due(uow.conn, limit=limit)
        expired = 0
        for account_id, hold_id in due:
            with self._ctx.uow() as uow:
                ledger.lock_account(uow.conn, account_id)
                expired += holds.settle(uow.conn, account_id, hold_id, HoldStatus.EXPIRED) is not None
                uow.commit()
        return expired

    def _operator_only(self, caller: Caller, workspace_id: str, detail: str) -> None:
        if not caller.is_operator:
            with self._ctx.read() as uow:
                access.refuse_user(uow.conn, caller, workspace_id, detail)
        if not looks_like("ws", workspace_id):
            raise NotFound("workspace not found")

    @staticmethod
    def _hold(conn: Connection, workspace_id: str, hold_id: str) -> Hold:
        found = holds.get(conn, workspace_id, hold_id) \
            if looks_like("ws", workspace_id) and looks_like("hold", hold_id) else None
        if found is None:
            raise NotFound("hold not found")
        return found


def apply_capture(conn: Connection, op: Operation, ids: PublicIds) -> dict:
    """Apply a queued capture in the worker's transaction, its workspace's and account's locks taken first."""
    usage.lock_workspace(conn, op.workspace_id)
    ledger.lock_account(conn, op.billing_account_id)
    return apply_captures(conn, [op], ids)[op.id]


def apply_captures(conn: Connection, ops: list[Operation], ids: PublicIds) -> dict[str, dict]:
    """Apply queued captures in the worker's transaction, which holds their workspaces' and accounts' locks: each
    hold stops reserving and what was captured is debited as usage once (drawn from the grants, counted as the
    workspace's spending), a statement for each step whatever the number of captures. The reservation covered
    it, so it is debited even where a grant expired meanwhile took the balance below it (the balance may go below
    zero). The results by operation id."""
    settled = holds.settle_many(conn, [(op.billing_account_id, op.payload["holdId"]) for op in ops])
    # Debited in the batch's order (the statement returns the holds in any order): each draws where the one before
    # it left off.
    captured = [hold for op in ops if (hold := settled.get(op.payload["holdId"])) and hold.captured_cents]
    posted = ledger.post_many(conn, [ledger.NewEntry(
        hold.billing_account_id, -hold.captured_cents, f"hold:{hold.id}", workspace_id=hold.workspace_id,
        description=hold.description or "Hold captured", reference=hold.reference or hold.id) for hold in captured],
        kind=EntryKind.USAGE)
    grants.draw_each(conn, list(posted.values()))
    spent: dict[str, int] = {}
    for hold in captured:
        spent[hold.workspace_id] = spent.get(hold.workspace_id, 0) + hold.captured_cents
    spend.add_many(conn, spent)
    results = {}
    for op in ops:
        hold_id = op.payload["holdId"]
        hold = settled.get(hold_id) or holds.locked(conn, op.billing_account_id, hold_id)  # settled before: applied
        entry = posted.get(f"hold:{hold_id}") or (ledger.find(conn, hold.billing_account_id, f"hold:{hold_id}")
                                                  if hold.captured_cents else None)
        results[op.id] = {"holdId": hold.id, "billingAccountId": hold.billing_account_id,
                          "capturedCents": hold.captured_cents,
                          "releasedCents": hold.amount_cents - hold.captured_cents,
                          "transactionId": ids.transaction(entry.id) if entry else None,
                          "balanceAfterCents": entry.balance_after_cents if entry else None}
    return results
