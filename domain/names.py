"""The names the service stores and sends, each given once: statuses, entry kinds, task names.

The enums are StrEnums: a member equals its text, so it is stored, compared and rendered as the string in
the database and the contract.
"""
from enum import StrEnum


class OperationStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


UNFINISHED = (OperationStatus.QUEUED, OperationStatus.RUNNING)
FINISHED = (OperationStatus.SUCCEEDED, OperationStatus.FAILED)


OPERATION_STATUSES = tuple(status.value for status in OperationStatus)


class CheckoutStatus(StrEnum):
    PENDING = "pending"
    COMPLETED = "completed"
    EXPIRED = "expired"
    FAILED = "failed"


CHECKOUT_STATUSES = tuple(status.value for status in CheckoutStatus)


class EntryKind(StrEnum):
    """Ledger entry (transaction) kinds: credits are positive, debits negative."""
    INTRO_CREDIT = "intro_credit"
    CREDIT_GRANT = "credit_grant"
    STRIPE_TOPUP = "stripe_topup"
    X402_TOPUP = "x402_topup"
    USAGE = "usage"
    REFUND = "refund"
    ADJUSTMENT = "adjustment"
    EXPIRY = "expiry"  # what was left of a grant at its expiresAt


ENTRY_KINDS = tuple(kind.value for kind in EntryKind)


class GrantStatus(StrEnum):
    ACTIVE = "active"
    DEPLETED = "depleted"
    EXPIRED = "expired"


GRANT_STATUSES = tuple(status.value for status in GrantStatus)


class GrantSource(StrEnum):
    INTRO = "intro"
    OPERATOR = "operator"
    STRIPE = "stripe"
    X402 = "x402"


GRANT_SOURCES = tuple(source.value for source in GrantSource)


class GrantCategory(StrEnum):
    PAID = "paid"
    PROMOTIONAL = "promotional"


GRANT_CATEGORIES = tuple(category.value for category in GrantCategory)


class HoldStatus(StrEnum):
    ACTIVE = "active"
    CAPTURED = "captured"
    RELEASED = "released"
    EXPIRED = "expired"


HOLD_STATUSES = tuple(status.value for status in HoldStatus)


class WebhookEventType(StrEnum):
    """The events a webhook endpoint subscribes to (`events`)."""
    BALANCE_LOW = "balance.low"
    BALANCE_DEPLETED = "balance.depleted"
    TRANSACTION_CREATED = "transaction.created"
    CHECKOUT_COMPLETED = "checkout.completed"
    CHECKOUT_FAILED = "checkout.failed"
    OPERATION_FAILED = "operation.failed"
    GRANT_EXPIRING = "grant.expiring"
    SPEND_LIMIT_ALERT = "spend_limit.alert"
    AUTO_TOP_UP_SUCCEEDED = "auto_top_up.succeeded"
    AUTO_TOP_UP_FAILED = "auto_top_up.failed"


WEBHOOK_EVENT_TYPES = tuple(event.value for event in WebhookEventType)


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


DELIVERY_STATUSES = tuple(status.value for status in DeliveryStatus)


class AutoTopUpStatus(StrEnum):
    PENDING = "pending"  # recorded; its PaymentIntent not made, or Stripe's answer not recorded yet
    PROCESSING = "processing"  # the PaymentIntent is made: payment_intent.succeeded credits it
    SUCCEEDED = "succeeded"
    FAILED = "failed"


IN_FLIGHT = (AutoTopUpStatus.PENDING, AutoTopUpStatus.PROCESSING)


class Task(StrEnum):
    """Celery task names: the domain sends them, tasks/ registers them, beat_schedule.py schedules them
    (tests/unit/test_task_names.py checks each is registered and none is spelled anywhere else)."""
    APPLY_OPERATION = "ledger.apply_operation"
    APPLY_TIER_OPERATION = "tiers.apply_operation"
    RECOMPUTE_TIER = "tiers.recompute"
    REFRESH_STALE_TIERS = "tiers.refresh_stale"
    PROVISION_DEFAULT_ACCOUNT = "accounts.provision_default"
    BACKFILL_DEFAULT_ACCOUNTS = "accounts.backfill_default"
    APPLY_STRIPE_EVENT = "payments.apply_stripe_event"
    RECONCILE_STRIPE = "payments.reconcile_stripe"
    SETTLE_X402 = "payments.settle_x402"
    RECONCILE_X402 = "payments.reconcile_x402"
    CHARGE_AUTO_TOP_UP = "payments.charge_auto_top_up"
    SAVE_CARD = "payments.save_card"
    RELAY_AUTO_TOP_UPS = "payments.relay_auto_top_ups"
    EXPIRE_GRANTS = "ledger.expire_grants"
    EXPIRE_HOLDS = "ledger.expire_holds"
    RELAY_OUTBOX = "maintenance.relay_outbox"
    PURGE_IDEMPOTENCY_KEYS = "maintenance.purge_idempotency_keys"
    DISPATCH_WEBHOOKS = "webhooks.dispatch"
    DELIVER_WEBHOOK = "webhooks.deliver"
    NOTICE_EXPIRING_GRANTS = "webhooks.notice_expiring_grants"
