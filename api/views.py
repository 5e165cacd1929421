"""Domain objects as the contract's JSON."""
from domain import times
from domain.models import (Balance, BillingAccount, Checkout, Entry, Grant, Hold, LinkedAccount, Operation, Page,
                           Summary, UsageOverview, User, Workspace)
from domain.ratelimit import Decision
from domain.services.rate_limits import status_json as rate_limit_status  # also a refresh operation's result


ts = times.rfc3339


def user(u: User) -> dict:
    return {"id": u.id, "email": u.email, "name": u.name,
            "defaultBillingAccountId": u.default_billing_account_id, "createdAt": ts(u.created_at)}


def account(a: BillingAccount) -> dict:
    return {"id": a.id, "name": a.name, "ownerUserId": a.owner_user_id, "isUserDefault": a.is_user_default,
            "currency": a.currency, "balanceCents": a.balance_cents, "createdAt": ts(a.created_at)}


def linked_account(item: LinkedAccount) -> dict:
    return account(item.account) | {"isWorkspaceDefault": item.is_workspace_default,
                                    "linkedAt": ts(item.linked_at)}


def workspace(w: Workspace) -> dict:
    return {"id": w.id, "name": w.name, "ownerUserId": w.owner_user_id,
            "defaultBillingAccountId": w.default_billing_account_id, "createdAt": ts(w.created_at)}


def balance(b: Balance, workspace_id: str | None = None) -> dict:
    next_expiry = {"amountCents": b.next_expiry_cents, "expiresAt": ts(b.next_expiry_at)} if b.next_expiry_at else None
    body = {"billingAccountId": b.billing_account_id, "balanceCents": b.balance_cents,
            "availableCents": b.available_cents, "paidCents": b.paid_cents, "promotionalCents": b.promotional_cents,
            "nextExpiry": next_expiry, "currency": b.currency, "asOf": ts(b.as_of)}
    return body | {"workspaceId": workspace_id} if workspace_id else body


def transaction(e: Entry) -> dict:
    return {"id": e.public_id, "billingAccountId": e.billing_account_id, "workspaceId": e.workspace_id,
            "kind": e.kind, "amountCents": e.amount_cents, "balanceAfterCents": e.balance_after_cents,
            "description": e.description, "reference": e.reference, "createdAt": ts(e.created_at)}


def grant(g: Grant) -> dict:
    return {"id": g.id, "billingAccountId": g.billing_account_id, "source": g.source, "category": g.category,
            "amountCents": g.amount_cents, "remainingCents": g.remaining_cents, "priority": g.priority,
            "expiresAt": ts(g.expires_at), "status": g.status, "createdAt": ts(g.created_at)}


def hold(h: Hold) -> dict:
    return {"id": h.id, "workspaceId": h.workspace_id, "billingAccountId": h.billing_account_id,
            "amountCents": h.amount_cents, "capturedCents": h.captured_cents, "status": h.status,
            "description": h.description, "expiresAt": ts(h.expires_at), "reference": h.reference,
            "createdAt": ts(h.created_at), "settledAt": ts(h.settled_at), "captureOperationId": h.capture_operation_id}


def spend_limit(s) -> dict:
    return {"workspaceId": s.workspace_id, "monthlyLimitCents": s.monthly_limit_cents, "spentCents": s.spent_cents,
            "reservedCents": s.reserved_cents, "periodStart": ts(s.period_start), "periodEnd": ts(s.period_end),
            "alertPercents": s.alert_percents,
            "alerts": [{"percent": a.percent, "limitCents": a.limit_cents, "spentCents": a.spent_cents,
                        "crossedAt": ts(a.crossed_at)} for a in s.alerts]}


def billing_settings(s) -> dict:
    return {"workspaceId": s.workspace_id, "lowBalanceCents": s.low_balance_cents,
            "autoTopUp": auto_top_up(s.auto_top_up, s.card)}


def auto_top_up(a, card) -> dict:
    method = {"brand": card.brand, "last4": card.last4} if card and card.payment_method_id else None
    if a is None:
        return {"enabled": False, "thresholdCents": None, "amountCents": None, "maxPerDay": 3, "paymentMethod": method}
    return {"enabled": a.enabled, "thresholdCents": a.threshold_cents, "amountCents": a.amount_cents,
            "maxPerDay": a.max_per_day, "paymentMethod": method}


def page(p: Page, render) -> dict:
    return {"data": [render(item) for item in p.items], "nextCursor": p.next_cursor}


def summary(s: Summary, workspace_id: str | None = None) -> dict:
    body = {"billingAccountId": s.billing_account_id, "currency": s.currency,
            "balanceCents": s.balance_cents, "totalCreditedCents": s.total_credited_cents,
            "totalDebitedCents": s.total_debited_cents, "transactionCount": s.transaction_count,
            "lastTransactionAt": ts(s.last_transaction_at),
            "byKind": {kind: {"count": t.count, "amountCents": t.amount_cents} for kind, t in s.by_kind.items()}}
    return body | {"workspaceId": workspace_id} if workspace_id else body


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


def usage_overview(o: UsageOverview) -> dict:
    return {"workspaceId": o.workspace_id, "billingAccountId": o.billing_account_id, "from": ts(o.since),
            "to": ts(o.until), "granularity": o.granularity, "totalUsageCents": o.total_usage_cents,
            "series": [{"periodStart": ts(p.period_start), "usageCents": p.usage_cents, "quantity": p.quantity,
                        "events": p.events} for p in o.series],
            "byMetric": [{"metric": m.metric, "quantity": m.quantity, "usageCents": m.usage_cents}
                         for m in o.by_metric]}


def rate_limit_decision(d: Decision, tier: str) -> dict:
    return {"allowed": d.allowed, "limit": d.limit, "remaining": d.remaining, "resetSeconds": d.reset_seconds,
            "tier": tier}
