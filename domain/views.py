"""Domain objects as the contract's JSON, where the API's answers and the webhook payloads share them."""
import dataclasses
import operator

from domain import times
from domain.models import Checkout, Entry, Grant, Operation

ts = times.rfc3339


def transaction_row(r: tuple) -> dict:
    """A ledger entry from its fields as a tuple, in Entry's order (a page read on the driver: no Entry per row)."""
    return {"id": r[9], "billingAccountId": r[1], "workspaceId": r[2], "kind": r[3], "amountCents": r[4],
            "balanceAfterCents": r[5], "description": r[6], "reference": r[7], "createdAt": ts(r[8])}


_ENTRY_FIELDS = operator.attrgetter(*(field.name for field in dataclasses.fields(Entry)))


def transaction(e: Entry) -> dict:
    return transaction_row(_ENTRY_FIELDS(e))


def grant(g: Grant) -> dict:
    return {"id": g.id, "billingAccountId": g.billing_account_id, "source": g.source, "category": g.category,
            "amountCents": g.amount_cents, "remainingCents": g.remaining_cents, "priority": g.priority,
            "expiresAt": ts(g.expires_at), "status": g.status, "createdAt": ts(g.created_at)}


def operation(op: Operation) -> dict:
    return {"id": op.id, "kind": op.kind, "status": op.status, "result": op.result, "error": op.error,
            "attempts": op.attempts, "lastError": op.last_error, "nextAttemptAt": ts(op.next_attempt_at),
            "createdAt": ts(op.created_at), "updatedAt": ts(op.updated_at)}


def checkout(c: Checkout) -> dict:
    body = {"id": c.id, "provider": c.provider, "status": c.status, "workspaceId": c.workspace_id,
            "billingAccountId": c.billing_account_id, "amountCents": c.amount_cents, "currency": c.currency,
            "createdAt": ts(c.created_at), "completedAt": ts(c.completed_at), "failureReason": c.failure_reason}
    if c.provider == "stripe":
        return body | {"url": c.url, "stripeSessionId": c.provider_ref}
    return body | {"network": c.network, "payer": c.payer, "nonce": c.nonce, "operationId": c.operation_id,
                   "transaction": c.details.get("transaction")}
