"""x402 top-ups: a paid request is claimed under (network, payer, nonce), verified, then settled and
credited exactly once by the payments worker."""
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING
from datetime import timedelta

from domain.errors import Conflict, NotConfigured, Unavailable
from domain.grants import PAID
from domain.ids import new_id
from domain.models import Caller, Checkout, Operation, Workspace
from domain.names import CheckoutStatus, EntryKind, GrantSource, OperationStatus, Task
from domain.providers.x402_types import FacilitatorUnavailable, Payment, PaymentRejected, Settlement
from domain.services import access, grants
from domain.services.context import Context
from domain.store import checkouts, operations, x402_payments
from domain.store.uow import Connection

if TYPE_CHECKING:  # the x402 SDK is slow to import; only a configured gateway loads it
    from domain.providers.x402_gateway import X402Gateway

log = logging.getLogger(__name__)

SETTLE_KIND = "x402_settle"
CLAIM_STALE_AFTER = timedelta(minutes=2)  # a verify still in flight after this died with its request
SETTLE_LEASE = timedelta(minutes=5)  # one settle attempt at a time; longer than any facilitator call
EXPIRY_GRACE_SECONDS = 60  # clock skew between us and the chain
HEADER_REQUIRED = "PAYMENT-SIGNATURE header is required"


@dataclass(frozen=True)
class PaymentRequired:
    """Answer 402: pay (again) on these terms; body and header carry the same PaymentRequired."""

    body: dict
    header: str


@dataclass(frozen=True)
class PaymentAccepted:
    """Answer 202: the payment is recorded and its operation settles it."""

    checkout: Checkout
    operation: Operation
    version: int  # the payload's x402 version; 1 answers with X-PAYMENT-RESPONSE
    payment_response: str | None = None  # base64 SettleResponse, once settlement is final


class X402CheckoutService:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self.clock = time.time

    @property
    def _x402(self) -> "X402Gateway":
        if self._ctx.x402 is None:
            raise NotConfigured("x402 is not configured (X402_PAY_TO)")
        return self._ctx.x402

    def checkout(self, caller: Caller, workspace_id: str, amount_cents: int, header: str | None,
                 url: str) -> PaymentRequired | PaymentAccepted:
        """Terms without a payment; with one: match, claim, verify, accept. A payload accepted before
        answers with the same checkout and operation."""
        with self._ctx.uow() as uow:
            workspace = access.workspace(uow.conn, caller, workspace_id, manage=True).workspace
        gateway = self._x402  # after the access check: a workspace the caller may not see is 404 either way
        description = f"Top up workspace {workspace.id} with {amount_cents} cents"
        try:
            if header is None:
                raise PaymentRejected(HEADER_REQUIRED)
            payment = gateway.read_payment(header, amount_cents, url, description)
            checkout, claimed = self._claim(caller, workspace, amount_cents, payment)
            if not claimed:
                return self._replay(workspace, checkout, payment)
            self._verify(checkout, payment)
        except PaymentRejected as exc:
            return PaymentRequired(*gateway.payment_required(amount_cents, url, description, str(exc)))
        return self._accept(caller, checkout, payment)

    def _claim(self, caller: Caller, workspace: Workspace, amount_cents: int,
               payment: Payment) -> tuple[Checkout, bool]:
        """Record the payment before anything else; the unique (network, payer, nonce) admits one claim."""
        details = {"payment": payment.stored()}
        with self._ctx.uow() as uow:
            checkout, claimed = checkouts.insert_checkout(
                uow.conn, checkout_id=new_id("chk"), provider="x402", workspace_id=workspace.id,
                billing_account_id=workspace.default_billing_account_id, amount_cents=amount_cents,
                created_by=caller.name, network=payment.network, payer=payment.payer, nonce=payment.nonce,
                details=details)
            if not claimed and checkout.workspace_id == workspace.id:
                reopened = x402_payments.reopen(uow.conn, checkout.id, details=details,
                                                stale_after=CLAIM_STALE_AFTER)
                checkout, claimed = (reopened, True) if reopened else (checkout, False)
            uow.commit()
        return checkout, claimed

    def _replay(self, workspace: Workspace, checkout: Checkout, payment: Payment) -> PaymentAccepted:
        if checkout.workspace_id != workspace.id or checkout.details["payment"]["signature"] != payment.signature:
            raise Conflict("this payment authorization (network, payer, nonce) belongs to another checkout")
        if checkout.operation_id is None:
            raise Conflict("another request with this payment is being verified; send the same request again shortly")
        with self._ctx.uow() as uow:
            op = operations.get(uow.conn, checkout.operation_id)
        return PaymentAccepted(checkout, op, payment.version, self._payment_response(checkout))

    def _payment_response(self, checkout: Checkout) -> str | None:
        if checkout.status == CheckoutStatus.PENDING:
            return None
        return self._x402.payment_response(Payment.from_stored(checkout.details["payment"]),
                                           success=checkout.status == CheckoutStatus.COMPLETED,
                                           transaction=checkout.details.get("transaction"),
                                           reason=checkout.failure_reason)

    def _verify(self, checkout: Checkout, payment: Payment) -> None:
        """Verify outside any transaction; a refusal releases the claim, so the payload may be sent again."""
        try:
            verdict = self._x402.verify(payment)
        except FacilitatorUnavailable as exc:
            self._release(checkout.id, f"facilitator_unavailable: {exc}")
            raise Unavailable("the x402 facilitator did not answer and nothing was charged; "
                              "send the same payment again") from exc
        if not verdict.valid:
            self._release(checkout.id, verdict.reason)
            raise PaymentRejected(verdict.reason)

    def _release(self, checkout_id: str, reason: str) -> None:
        with self._ctx.uow() as uow:
            checkouts.change(uow.conn, checkout_id, status=CheckoutStatus.FAILED, failure_reason=reason)
            uow.commit()

    def _accept(self, caller: Caller, checkout: Checkout, payment: Payment) -> PaymentAccepted:
        """Bind the settling operation to the verified payment; the worker gets it after the commit."""
        with self._ctx.uow() as uow:
            op, _ = operations.insert_operation(
                uow.conn, operation_id=new_id("op"), kind=SETTLE_KIND, caller=caller.name,
                idempotency_scope=f"x402:{checkout.id}", workspace_id=checkout.workspace_id,
                billing_account_id=checkout.billing_account_id,
                payload={"checkoutId": checkout.id, "amountCents": checkout.amount_cents},
                trace_parent=self._ctx.trace_parent())
            accepted = x402_payments.attach_operation(uow.conn, checkout.id, op.id)
            if accepted is None:
                raise Conflict("another request took this payment over while it was verified; send it again")
            uow.after_commit(lambda: self._ctx.enqueue(Task.SETTLE_X402, operation_id=op.id))
            uow.commit()
        return PaymentAccepted(accepted, op, payment.version)

    def settle(self, operation_id: str) -> None:
        """One settle attempt. Safe to run twice: an attempt holds a lease on the operation, and the
        credit's ledger key is (network, payer, nonce)."""
        gateway = self._x402
        claimed = self._claim_settlement(operation_id)
        if claimed is None:
            return
        op, checkout = claimed
        payment = Payment.from_stored(checkout.details["payment"])
        if self.clock() > payment.valid_before + EXPIRY_GRACE_SECONDS:
            self._give_up(op.id, checkout.id)
            return
        self._record(op.id, checkout.id, gateway.settle(payment))

    def _claim_settlement(self, operation_id: str) -> tuple[Operation, Checkout] | None:
        with self._ctx.uow() as uow:
            op = x402_payments.claim_operation(uow.conn, operation_id, lease=SETTLE_LEASE)
            checkout = checkouts.get(uow.conn, op.payload["checkoutId"], for_update=True) if op else None
            if checkout is None or checkout.status != CheckoutStatus.PENDING:
                return None  # finished (or held) elsewhere: nothing to claim
            attempts = checkout.details.get("settleAttempts", 0) + 1
            checkout = checkouts.change(uow.conn, checkout.id, details=checkout.details | {"settleAttempts": attempts})
            uow.commit()
        return op, checkout

    def _record(self, operation_id: str, checkout_id: str, outcome: Settlement) -> None:
        """Credit on success; fail on a definite refusal; otherwise leave it pending for the next attempt."""
        with self._ctx.uow() as uow:
            checkout = checkouts.get(uow.conn, checkout_id, for_update=True)
            # A spent nonce after an earlier attempt may be that attempt's own transfer: not a refusal.
            ours = outcome.authorization_used and checkout.details.get("settleAttempts", 0) > 1
            if outcome.outcome == "settled":
                result = self._credit(uow.conn, checkout, outcome.transaction)
                operations.set_status(uow.conn, operation_id, OperationStatus.SUCCEEDED, result=result)
                account_id = checkout.billing_account_id
                uow.after_commit(lambda: self._ctx.enqueue(Task.RECOMPUTE_TIER, account_id=account_id))
            elif outcome.outcome == "failed" and not ours:
                checkouts.change(uow.conn, checkout_id, status=CheckoutStatus.FAILED, failure_reason=outcome.reason)
                operations.set_status(uow.conn, operation_id, OperationStatus.FAILED,
                                      error={"title": "settlement failed", "detail": outcome.reason})
            else:
                self._wait(uow.conn, checkout, operation_id, outcome)
            uow.commit()

    def _credit(self, conn: Connection, checkout: Checkout, transaction: str | None) -> dict:
        """x402_topup once per (network, payer, nonce), in the transaction that completes the checkout."""
        posting = grants.credit(conn, checkout.billing_account_id, checkout.amount_cents, PAID[GrantSource.X402],
                                kind=EntryKind.X402_TOPUP,
                                key=f"x402:{checkout.network}:{checkout.payer.lower()}:{checkout.nonce}",
                                workspace_id=checkout.workspace_id, description="x402 top-up (USDC)",
                                reference=checkout.id)
        if checkout.status != CheckoutStatus.COMPLETED:
            checkouts.change(conn, checkout.id, status=CheckoutStatus.COMPLETED, failure_reason=None,
                             details=checkout.details | {"transaction": transaction})
        return {"checkoutId": checkout.id, "transactionId": self._ctx.ids.transaction(posting.entry.id),
                "billingAccountId": checkout.billing_account_id, "amountCents": posting.entry.amount_cents,
                "balanceAfterCents": posting.entry.balance_after_cents, "transaction": transaction}

    @staticmethod
    def _wait(conn: Connection, checkout: Checkout, operation_id: str, outcome: Settlement) -> None:
        log.warning("x402 settlement of %s is not known yet (%s); the reconcile job tries again",
                    checkout.id, outcome.reason)
        seen = checkout.details.get("transaction")
        unconfirmed = bool(outcome.transaction or outcome.authorization_used or checkout.details.get("unconfirmed"))
        checkouts.change(conn, checkout.id, details=checkout.details | {
            "lastOutcome": outcome.reason, "transaction": outcome.transaction or seen, "unconfirmed": unconfirmed})
        operations.set_status(conn, operation_id, OperationStatus.QUEUED)

    def _give_up(self, operation_id: str, checkout_id: str) -> None:
        """Past validBefore: expired, or failed as unconfirmed when a transfer may have happened."""
        with self._ctx.uow() as uow:
            checkout = checkouts.get(uow.conn, checkout_id, for_update=True)
            if checkout.details.get("unconfirmed"):
                status, reason = CheckoutStatus.FAILED, ("settlement_unconfirmed: the facilitator never confirmed transaction "
                                            f"{checkout.details.get('transaction') or '(no hash)'}; check the chain")
                log.warning("x402 checkout %s: %s", checkout_id, reason)
            else:
                status, reason = CheckoutStatus.EXPIRED, "the authorization expired (validBefore) before it was settled"
            checkouts.change(uow.conn, checkout_id, status=status, failure_reason=reason)
            operations.set_status(uow.conn, operation_id, OperationStatus.FAILED, error={"title": "not settled", "detail": reason})
            uow.commit()

    def reconcile(self, *, older_than: timedelta = timedelta(seconds=30), limit: int = 200) -> int:
        """Re-drive pending x402 payments: re-settle accepted ones with their stored payload, expire claims
        that were never accepted once validBefore has passed. Returns how many it looked at."""
        with self._ctx.uow() as uow:
            due = x402_payments.due(uow.conn, older_than=older_than, limit=limit)
        for checkout in due:
            if checkout.operation_id is not None:
                self._ctx.enqueue(Task.SETTLE_X402, operation_id=checkout.operation_id)
            elif self.clock() > checkout.details["payment"]["valid_before"] + EXPIRY_GRACE_SECONDS:
                with self._ctx.uow() as uow:
                    x402_payments.expire_claim(uow.conn, checkout.id, stale_after=CLAIM_STALE_AFTER,
                                               reason="never accepted, and the authorization expired")
                    uow.commit()
        return len(due)
