"""The billing objects the services hand out; plain, frozen data."""
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

OPERATOR = "operator"


@dataclass(frozen=True)
class Caller:
    """Who is asking: a user (by id) or the operator."""

    user_id: str | None

    @property
    def is_operator(self) -> bool:
        return self.user_id is None

    @property
    def name(self) -> str:
        return self.user_id or OPERATOR


OPERATOR_CALLER = Caller(user_id=None)


@dataclass(frozen=True)
class KeyHolder:
    """A caller known so far only by the SHA-256 of its API key (never the operator). The read it asks for
    checks the key in the same statement (domain.store.prepared): one round trip, not a lookup and then the
    read; no live key with this hash raises Unauthenticated. Only reads that say so accept one."""

    key_hash: bytes
    is_operator = False


@dataclass(frozen=True)
class User:
    id: str
    email: str
    name: str | None
    default_billing_account_id: str | None
    created_at: datetime


@dataclass(frozen=True)
class BillingAccount:
    id: str
    name: str
    owner_user_id: str
    is_user_default: bool
    currency: str
    balance_cents: int
    created_at: datetime


@dataclass(frozen=True)
class LinkedAccount:
    account: BillingAccount
    is_workspace_default: bool
    linked_at: datetime


@dataclass(frozen=True)
class Workspace:
    id: str
    name: str
    owner_user_id: str
    default_billing_account_id: str
    created_at: datetime


@dataclass(frozen=True)
class Membership:
    workspace: Workspace
    role: str | None  # None for the operator, who is no member


@dataclass(frozen=True)
class Entry:
    id: int
    billing_account_id: str
    workspace_id: str | None
    kind: str
    amount_cents: int
    balance_after_cents: int
    description: str
    reference: str | None
    created_at: datetime
    public_id: str = ""  # what callers see (domain.public_ids): `txn_` and no count


@dataclass(frozen=True)
class Page:
    items: list[Any]
    next_cursor: str | None


@dataclass(frozen=True)
class KindTotal:
    count: int
    amount_cents: int


@dataclass(frozen=True)
class Summary:
    billing_account_id: str
    currency: str
    balance_cents: int
    total_credited_cents: int
    total_debited_cents: int
    transaction_count: int
    last_transaction_at: datetime | None
    by_kind: dict[str, KindTotal] = field(default_factory=dict)


@dataclass(frozen=True)
class Balance:
    billing_account_id: str
    currency: str
    balance_cents: int
    as_of: datetime
    available_cents: int = 0  # the balance less what active holds reserve
    paid_cents: int = 0  # what active paid grants hold
    promotional_cents: int = 0
    next_expiry_cents: int = 0
    next_expiry_at: datetime | None = None  # the soonest expiresAt of an active grant


@dataclass(frozen=True)
class Operation:
    id: str
    kind: str
    status: str
    caller: str
    workspace_id: str | None
    billing_account_id: str | None
    payload: dict
    result: dict | None
    error: dict | None
    attempts: int
    created_at: datetime
    updated_at: datetime
    last_error: dict | None = None  # why the last attempt did not apply it, while it is retried
    next_attempt_at: datetime | None = None


@dataclass(frozen=True)
class Checkout:
    id: str
    provider: str
    status: str
    workspace_id: str
    billing_account_id: str
    amount_cents: int
    currency: str
    created_by: str
    provider_ref: str | None
    url: str | None
    details: dict
    network: str | None
    payer: str | None
    nonce: str | None
    operation_id: str | None
    failure_reason: str | None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    idempotency_scope: str | None = None  # created under an Idempotency-Key: a retry may resume it


@dataclass(frozen=True)
class AccountTier:
    """A billing account's rate-limit tier as last computed, and the rule that decided it."""

    billing_account_id: str
    tier: str
    reason: str
    paid_cents: int
    balance_cents: int
    computed_at: datetime


@dataclass(frozen=True)
class RateLimitStatus:
    workspace_id: str
    billing_account_id: str
    tier: AccountTier
    requests_per_minute: int
    remaining: int
    reset_seconds: int


@dataclass(frozen=True)
class UsagePeriod:
    period_start: datetime
    usage_cents: int
    quantity: int
    events: int


@dataclass(frozen=True)
class MetricUsage:
    metric: str
    quantity: int
    usage_cents: int


@dataclass(frozen=True)
class UsageOverview:
    workspace_id: str
    billing_account_id: str
    since: datetime
    until: datetime
    granularity: str
    series: list[UsagePeriod]
    by_metric: list[MetricUsage]

    @property
    def total_usage_cents(self) -> int:
        return sum(period.usage_cents for period in self.series)


@dataclass(frozen=True)
class Grant:
    """A credit as a lot: what is left of it, and when and in which order it is spent."""

    id: str
    billing_account_id: str
    source: str
    category: str
    amount_cents: int
    remaining_cents: int
    priority: int
    expires_at: datetime | None
    status: str
    created_at: datetime
    entry_id: int  # the credit's ledger entry: grants are paged by it


@dataclass(frozen=True)
class Hold:
    """Money reserved on an account for work whose cost is known afterwards; it moves no money itself."""

    id: str
    workspace_id: str
    billing_account_id: str
    amount_cents: int
    captured_cents: int
    status: str
    description: str
    reference: str | None
    expires_at: datetime
    created_at: datetime
    settled_at: datetime | None
    capture_operation_id: str | None


@dataclass(frozen=True)
class AutoTopUpSettings:
    """A workspace's auto top-up: when a debit leaves its default account below threshold_cents, charge the
    account's saved card amount_cents, at most max_per_day times a UTC day."""

    enabled: bool
    threshold_cents: int
    amount_cents: int
    max_per_day: int = 3
    failures_in_a_row: int = 0  # three turn it off


@dataclass(frozen=True)
class SavedCard:
    """A billing account's Stripe Customer and the card saved on it for off-session payments (None until one is)."""

    billing_account_id: str
    customer_id: str
    payment_method_id: str | None
    brand: str | None
    last4: str | None


@dataclass(frozen=True)
class AutoTopUp:
    """One off-session payment an auto top-up makes; recorded with the debit that crossed the threshold."""

    id: str
    billing_account_id: str
    workspace_id: str
    trigger_entry_id: int
    amount_cents: int
    status: str  # pending | processing | succeeded | failed
    payment_intent_id: str | None
    failure_code: str | None
    failure_message: str | None
    attempts: int
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True)
class WebhookEndpoint:
    id: str
    workspace_id: str
    url: str
    events: list[str]
    description: str | None
    enabled: bool
    created_at: datetime
    secret: str | None = None  # shown once, when it is created


@dataclass(frozen=True)
class WebhookDelivery:
    id: str
    endpoint_id: str
    event_id: str
    type: str
    status: str
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: datetime | None
    created_at: datetime
