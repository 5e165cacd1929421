"""Domain objects as the contract's JSON."""
import functools

from domain import times
from domain.models import Balance, BillingAccount, Hold, LinkedAccount, Page, Summary, UsageOverview, User, Workspace
# also the webhook payloads' objects
from domain.views import checkout, grant, operation, transaction, transaction_row  # noqa: F401
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


def webhook_endpoint(e) -> dict:
    body = {"id": e.id, "url": e.url, "events": e.events, "description": e.description, "enabled": e.enabled,
            "createdAt": ts(e.created_at)}
    return body | {"secret": e.secret} if e.secret is not None else body


def webhook_delivery(d) -> dict:
    return {"id": d.id, "eventId": d.event_id, "type": d.type, "status": d.status, "attempts": d.attempts,
            "lastStatusCode": d.last_status_code, "lastError": d.last_error, "nextAttemptAt": ts(d.next_attempt_at)}


def page(p: Page, render) -> dict:
    return {"data": [render(item) for item in p.items], "nextCursor": p.next_cursor}


def summary(s: Summary, workspace_id: str | None = None) -> dict:
    body = {"billingAccountId": s.billing_account_id, "currency": s.currency,
            "balanceCents": s.balance_cents, "totalCreditedCents": s.total_credited_cents,
            "totalDebitedCents": s.total_debited_cents, "transactionCount": s.transaction_count,
            "lastTransactionAt": ts(s.last_transaction_at),
            "byKind": {kind: {"count": t.count, "amountCents": t.amount_cents} for kind, t in s.by_kind.items()}}
    return body | {"workspaceId": workspace_id} if workspace_id else body




# A period's start (a whole UTC hour or day) is the same text from one overview to the next (the same 31 days
# all day long), and formatting it was most of the view's time: kept, up to a few months of hours.
_period_start = functools.lru_cache(maxsize=4096)(ts)


def usage_overview(o: UsageOverview) -> dict:
    return {"workspaceId": o.workspace_id, "billingAccountId": o.billing_account_id, "from": ts(o.since),
            "to": ts(o.until), "granularity": o.granularity, "totalUsageCents": o.total_usage_cents,
            "series": [{"periodStart": _period_start(p.period_start), "usageCents": p.usage_cents,
                        "quantity": p.quantity, "events": p.events} for p in o.series],
            "byMetric": [{"metric": m.metric, "quantity": m.quantity, "usageCents": m.usage_cents}
                         for m in o.by_metric]}


def rate_limit_decision(d: Decision, tier: str) -> dict:
    return {"allowed": d.allowed, "limit": d.limit, "remaining": d.remaining, "resetSeconds": d.reset_seconds,
            "tier": tier}
