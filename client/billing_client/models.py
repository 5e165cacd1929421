# Generated from the service's GET /openapi.json by client/regenerate.py: do not edit.

from __future__ import annotations

from typing import Annotated, Any, Literal

from billing_client._base import Model
from pydantic import AwareDatetime, ConfigDict, Field, RootModel, StringConstraints


class FieldError(Model):
    field: str
    message: str


class Problem(Model):
    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldError] | None = None


class CreateUser(Model):
    email: Annotated[
        str, Field(max_length=254, min_length=3, pattern="^[^@\\s]+@[^@\\s]+$")
    ]
    name: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None


class CreatedUser(Model):
    id: str
    email: str
    name: str | None
    default_billing_account_id: Annotated[
        str | None, Field(alias="defaultBillingAccountId")
    ]
    created_at: Annotated[str, Field(alias="createdAt")]
    api_key: Annotated[str, Field(alias="apiKey")]


class User(Model):
    id: str
    email: str
    name: str | None
    default_billing_account_id: Annotated[
        str | None, Field(alias="defaultBillingAccountId")
    ]
    created_at: Annotated[str, Field(alias="createdAt")]


class Workspace(Model):
    id: str
    name: str
    owner_user_id: Annotated[str, Field(alias="ownerUserId")]
    default_billing_account_id: Annotated[str, Field(alias="defaultBillingAccountId")]
    created_at: Annotated[str, Field(alias="createdAt")]


class WorkspaceList(Model):
    data: list[Workspace]


class CreateWorkspace(Model):
    name: Annotated[str, Field(max_length=200, min_length=1)]
    billing_account_id: Annotated[
        Annotated[str, StringConstraints(min_length=1, max_length=100)] | None,
        Field(alias="billingAccountId"),
    ] = None


class AddMember(Model):
    user_id: Annotated[str, Field(alias="userId", max_length=100, min_length=1)]
    role: Literal["admin", "member"]


class Member(Model):
    user_id: Annotated[str, Field(alias="userId")]
    role: Literal["admin", "member"]


class BillingAccount(Model):
    id: str
    name: str
    owner_user_id: Annotated[str, Field(alias="ownerUserId")]
    is_user_default: Annotated[bool, Field(alias="isUserDefault")]
    currency: Literal["usd"]
    balance_cents: Annotated[int, Field(alias="balanceCents")]
    created_at: Annotated[str, Field(alias="createdAt")]


class BillingAccountList(Model):
    data: list[BillingAccount]


class BillingAccountDetail(Model):
    id: str
    name: str
    owner_user_id: Annotated[str, Field(alias="ownerUserId")]
    is_user_default: Annotated[bool, Field(alias="isUserDefault")]
    currency: Literal["usd"]
    balance_cents: Annotated[int, Field(alias="balanceCents")]
    created_at: Annotated[str, Field(alias="createdAt")]
    linked_workspace_ids: Annotated[list[str], Field(alias="linkedWorkspaceIds")]


class NextExpiry(Model):
    amount_cents: Annotated[
        int,
        Field(
            alias="amountCents", description="What the grants expiring then still hold."
        ),
    ]
    expires_at: Annotated[str, Field(alias="expiresAt")]


class Balance(Model):
    billing_account_id: Annotated[str, Field(alias="billingAccountId")]
    workspace_id: Annotated[str | None, Field(alias="workspaceId")] = None
    balance_cents: Annotated[int, Field(alias="balanceCents")]
    available_cents: Annotated[
        int,
        Field(
            alias="availableCents",
            description="The balance less what active holds reserve: what a usage event or a new hold may spend.",
        ),
    ]
    paid_cents: Annotated[
        int,
        Field(
            alias="paidCents",
            description="What active paid grants (Stripe, x402, paid operator credits) hold.",
        ),
    ]
    promotional_cents: Annotated[
        int,
        Field(
            alias="promotionalCents",
            description="What active promotional grants hold. While the balance is at least 0, paidCents + promotionalCents = balanceCents; below 0 both are 0.",
        ),
    ]
    next_expiry: Annotated[
        NextExpiry | None,
        Field(
            alias="nextExpiry",
            description="The soonest expiresAt of an active grant and what the grants expiring then hold; null when none expires.",
        ),
    ]
    currency: Literal["usd"]
    as_of: Annotated[
        str,
        Field(
            alias="asOf",
            description="The instant described: now, or the asOf asked for (one still to come reads as now).",
        ),
    ]


class KindTotal(Model):
    count: int
    amount_cents: Annotated[int, Field(alias="amountCents")]


class Summary(Model):
    billing_account_id: Annotated[str, Field(alias="billingAccountId")]
    workspace_id: Annotated[str | None, Field(alias="workspaceId")] = None
    currency: Literal["usd"]
    balance_cents: Annotated[int, Field(alias="balanceCents")]
    total_credited_cents: Annotated[int, Field(alias="totalCreditedCents")]
    total_debited_cents: Annotated[int, Field(alias="totalDebitedCents")]
    transaction_count: Annotated[int, Field(alias="transactionCount")]
    last_transaction_at: Annotated[str | None, Field(alias="lastTransactionAt")]
    by_kind: Annotated[dict[str, KindTotal], Field(alias="byKind")]


class Transaction(Model):
    id: str
    billing_account_id: Annotated[str, Field(alias="billingAccountId")]
    workspace_id: Annotated[str | None, Field(alias="workspaceId")]
    kind: Literal[
        "intro_credit",
        "credit_grant",
        "stripe_topup",
        "x402_topup",
        "usage",
        "refund",
        "adjustment",
        "expiry",
    ]
    amount_cents: Annotated[int, Field(alias="amountCents")]
    balance_after_cents: Annotated[int, Field(alias="balanceAfterCents")]
    description: str
    reference: str | None
    created_at: Annotated[str, Field(alias="createdAt")]


class TransactionPage(Model):
    data: list[Transaction]
    next_cursor: Annotated[str | None, Field(alias="nextCursor")]


class Grant(Model):
    id: str
    billing_account_id: Annotated[str, Field(alias="billingAccountId")]
    source: Literal["intro", "operator", "stripe", "x402"]
    category: Literal["paid", "promotional"]
    amount_cents: Annotated[int, Field(alias="amountCents")]
    remaining_cents: Annotated[
        int,
        Field(
            alias="remainingCents",
            description="What is left to spend; 0 once depleted or expired.",
        ),
    ]
    priority: Annotated[
        int,
        Field(
            description="0-100: debits draw from lower priorities first, then from the earliest expiresAt (none last), then from the oldest grant."
        ),
    ]
    expires_at: Annotated[str | None, Field(alias="expiresAt")]
    status: Literal["active", "depleted", "expired"]
    created_at: Annotated[str, Field(alias="createdAt")]


class GrantPage(Model):
    data: list[Grant]
    next_cursor: Annotated[str | None, Field(alias="nextCursor")]


class LinkedAccount(Model):
    id: str
    name: str
    owner_user_id: Annotated[str, Field(alias="ownerUserId")]
    is_user_default: Annotated[bool, Field(alias="isUserDefault")]
    currency: Literal["usd"]
    balance_cents: Annotated[int, Field(alias="balanceCents")]
    created_at: Annotated[str, Field(alias="createdAt")]
    is_workspace_default: Annotated[bool, Field(alias="isWorkspaceDefault")]
    linked_at: Annotated[str, Field(alias="linkedAt")]


class LinkedAccountList(Model):
    data: list[LinkedAccount]


class CreateBillingAccount(Model):
    name: Annotated[str, Field(max_length=200, min_length=1)]


class LinkBillingAccount(Model):
    billing_account_id: Annotated[
        str, Field(alias="billingAccountId", max_length=100, min_length=1)
    ]


class Hold(Model):
    id: str
    workspace_id: Annotated[str, Field(alias="workspaceId")]
    billing_account_id: Annotated[str, Field(alias="billingAccountId")]
    amount_cents: Annotated[int, Field(alias="amountCents")]
    captured_cents: Annotated[int, Field(alias="capturedCents")]
    status: Literal["active", "captured", "released", "expired"]
    description: str
    expires_at: Annotated[str, Field(alias="expiresAt")]
    reference: str | None
    created_at: Annotated[str, Field(alias="createdAt")]
    settled_at: Annotated[
        str | None,
        Field(
            alias="settledAt",
            description="When it stopped reserving: released, expired, or its capture applied; null while it reserves.",
        ),
    ]
    capture_operation_id: Annotated[
        str | None,
        Field(
            alias="captureOperationId",
            description="The operation that applies its capture, once captured.",
        ),
    ]


class HoldPage(Model):
    data: list[Hold]
    next_cursor: Annotated[str | None, Field(alias="nextCursor")]


class CreateHold(Model):
    amount_cents: Annotated[
        int,
        Field(
            alias="amountCents",
            description="Integer cents, 1 to 100,000,000.",
            gt=0,
            le=100000000,
        ),
    ]
    description: Annotated[str | None, Field(max_length=500)] = ""
    reference: (
        Annotated[str, StringConstraints(min_length=1, max_length=200)] | None
    ) = None
    expires_in_seconds: Annotated[
        int | None,
        Field(
            alias="expiresInSeconds",
            description="60 to 604800 (a week), default 3600: after it the hold stops reserving (a beat job releases it).",
            ge=60,
            le=604800,
        ),
    ] = 3600


class CaptureHold(Model):
    amount_cents: Annotated[
        int,
        Field(
            alias="amountCents",
            description="0 to the hold's amount: debited as usage once; the rest is released. 0 releases it all.",
            ge=0,
            le=100000000,
        ),
    ]


class Operation(Model):
    id: str
    kind: str
    status: Literal["queued", "running", "succeeded", "failed"]
    result: dict[str, Any] | None
    error: Annotated[
        dict[str, Any] | None,
        Field(
            description="Set when the operation failed: a business refusal (insufficient balance, unknown account, amount mismatch), never a transient cause."
        ),
    ]
    attempts: Annotated[int, Field(description="Attempts made so far to apply it.")]
    last_error: Annotated[
        dict[str, Any] | None,
        Field(
            alias="lastError",
            description="While it is retried: {title, detail, at} of the transient cause (a lock held by another transaction, a time limit, the database down, a killed worker) that stopped the last attempt.",
        ),
    ]
    next_attempt_at: Annotated[
        str | None,
        Field(
            alias="nextAttemptAt",
            description="While it waits for a retry: when it is tried next.",
        ),
    ]
    created_at: Annotated[str, Field(alias="createdAt")]
    updated_at: Annotated[str, Field(alias="updatedAt")]


class SpendAlert(Model):
    percent: int
    limit_cents: Annotated[int, Field(alias="limitCents")]
    spent_cents: Annotated[
        int,
        Field(
            alias="spentCents",
            description="The month's spending once the movement that crossed the step was applied.",
        ),
    ]
    crossed_at: Annotated[str, Field(alias="crossedAt")]


class SpendLimit(Model):
    workspace_id: Annotated[str, Field(alias="workspaceId")]
    monthly_limit_cents: Annotated[int | None, Field(alias="monthlyLimitCents")]
    spent_cents: Annotated[
        int,
        Field(
            alias="spentCents", description="Usage and captures debited this UTC month."
        ),
    ]
    reserved_cents: Annotated[
        int,
        Field(
            alias="reservedCents",
            description="What the workspace's unsettled holds reserve; it counts against the limit as well.",
        ),
    ]
    period_start: Annotated[str, Field(alias="periodStart")]
    period_end: Annotated[
        str, Field(alias="periodEnd", description="The next month's start (exclusive).")
    ]
    alert_percents: Annotated[list[int], Field(alias="alertPercents")]
    alerts: Annotated[
        list[SpendAlert],
        Field(description="The steps crossed this month, lowest first."),
    ]


class MonthlyLimitCents(RootModel[int]):
    root: Annotated[
        int,
        Field(
            description="What usage and captures may spend per UTC calendar month, in cents; null lifts the limit.",
            ge=0,
            le=1000000000000,
        ),
    ]


class AlertPercent(RootModel[int]):
    root: Annotated[int, Field(ge=1, le=100)]


class AlertPercents(RootModel[list[AlertPercent]]):
    root: Annotated[
        list[AlertPercent],
        Field(
            description="Steps (1-100, percent of the limit) whose crossing is recorded once a month; default [50, 80, 100].",
            max_length=10,
        ),
    ] = None


class PutSpendLimit(Model):
    monthly_limit_cents: Annotated[
        MonthlyLimitCents | None,
        Field(
            alias="monthlyLimitCents",
            description="What usage and captures may spend per UTC calendar month, in cents; null lifts the limit.",
        ),
    ]
    alert_percents: Annotated[AlertPercents | None, Field(alias="alertPercents")] = None


class AutoTopUp(Model):
    enabled: bool
    threshold_cents: Annotated[
        int,
        Field(
            alias="thresholdCents",
            description="A debit (usage, a hold's capture) that leaves the workspace's default account below this starts a top-up, while a card is saved for the account. 0 to 100,000,000.",
            ge=0,
            le=100000000,
        ),
    ]
    amount_cents: Annotated[
        int,
        Field(
            alias="amountCents",
            description="What each top-up charges the saved card and credits: 500 to 1,000,000 cents.",
            ge=500,
            le=1000000,
        ),
    ]
    max_per_day: Annotated[
        int | None,
        Field(
            alias="maxPerDay",
            description="Top-ups of the account started per UTC day at most (failed ones count), 1 to 20; default 3.",
            ge=1,
            le=20,
        ),
    ] = 3


class PaymentMethod(Model):
    brand: Annotated[
        str | None,
        Field(
            description="The card's brand as Stripe names it: visa, mastercard, amex, ..."
        ),
    ]
    last4: str | None


class BillingSettings(Model):
    workspace_id: Annotated[str, Field(alias="workspaceId")]
    low_balance_cents: Annotated[int | None, Field(alias="lowBalanceCents")]
    auto_top_up: Annotated[AutoTopUp, Field(alias="autoTopUp")]


class LowBalanceCents(RootModel[int]):
    root: Annotated[
        int,
        Field(
            description="`balance.low` is sent when a debit takes the default account's balance from at or above this to below it; null: never. Left out: unchanged.",
            ge=0,
            le=1000000000000,
        ),
    ] = None


class PutBillingSettings(Model):
    low_balance_cents: Annotated[
        LowBalanceCents | None,
        Field(
            alias="lowBalanceCents",
            description="`balance.low` is sent when a debit takes the default account's balance from at or above this to below it; null: never. Left out: unchanged.",
        ),
    ] = None
    auto_top_up: Annotated[
        AutoTopUp | None,
        Field(
            alias="autoTopUp",
            description="Auto top-up; null: not set up (off). Left out: unchanged.",
        ),
    ] = None


class AddCredits(Model):
    amount_cents: Annotated[
        int,
        Field(
            alias="amountCents",
            description="Integer cents, 1 to 100,000,000.",
            gt=0,
            le=100000000,
        ),
    ]
    description: Annotated[str | None, Field(max_length=500)] = ""
    category: Annotated[
        Literal["paid", "promotional"] | None,
        Field(description="The grant's category: `paid` or `promotional` (default)."),
    ] = "promotional"
    priority: Annotated[
        int | None,
        Field(
            description="0-100, default 50: debits draw from lower priorities first.",
            ge=0,
            le=100,
        ),
    ] = 50
    expires_at: Annotated[
        AwareDatetime | None,
        Field(
            alias="expiresAt",
            description="RFC 3339, in the future: what is left of the grant then is debited as `expiry`. Default: never.",
        ),
    ] = None


class UsageEvent(Model):
    event_id: Annotated[
        str,
        Field(
            alias="eventId",
            description="Printable ASCII without spaces; the event is debited once per workspace and eventId (also after the workspace's default account changed, among the accounts linked to it).",
            max_length=200,
            min_length=1,
            pattern="^[\\x21-\\x7e]+$",
        ),
    ]
    metric: Annotated[
        str, Field(max_length=100, min_length=1, pattern="^[A-Za-z0-9_.:/-]+$")
    ]
    quantity: Annotated[int, Field(ge=0, le=1000000000000)]
    amount_cents: Annotated[
        int,
        Field(
            alias="amountCents",
            description="Integer cents, 1 to 100,000,000.",
            gt=0,
            le=100000000,
        ),
    ]
    occurred_at: Annotated[
        AwareDatetime | None,
        Field(
            alias="occurredAt",
            description="RFC 3339 with an offset, 1970 or later in UTC; default: when the request was accepted. At most 5 minutes ahead.",
        ),
    ] = None


class RecordUsage(Model):
    events: Annotated[list[UsageEvent], Field(max_length=1000, min_length=1)]


class MetricUsage(Model):
    metric: str
    quantity: int
    usage_cents: Annotated[int, Field(alias="usageCents")]


class UsagePeriod(Model):
    period_start: Annotated[str, Field(alias="periodStart")]
    usage_cents: Annotated[int, Field(alias="usageCents")]
    quantity: int
    events: int


class UsageOverview(Model):
    workspace_id: Annotated[str, Field(alias="workspaceId")]
    billing_account_id: Annotated[str, Field(alias="billingAccountId")]
    from_: Annotated[str, Field(alias="from")]
    to: str
    granularity: Literal["day", "hour"]
    total_usage_cents: Annotated[int, Field(alias="totalUsageCents")]
    series: list[UsagePeriod]
    by_metric: Annotated[list[MetricUsage], Field(alias="byMetric")]


class RequestLimits(Model):
    requests_per_minute: Annotated[int, Field(alias="requestsPerMinute")]


class RateLimitStatus(Model):
    workspace_id: Annotated[str, Field(alias="workspaceId")]
    billing_account_id: Annotated[str, Field(alias="billingAccountId")]
    tier: str
    limits: RequestLimits
    remaining: int
    reset_seconds: Annotated[int, Field(alias="resetSeconds")]
    computed_at: Annotated[str, Field(alias="computedAt")]
    reason: str


class CheckRateLimit(Model):
    cost: Annotated[
        int | None,
        Field(description="Requests to consume, default 1.", ge=1, le=100000),
    ] = 1


class RateLimitDecision(Model):
    allowed: bool
    limit: int
    remaining: int
    reset_seconds: Annotated[int, Field(alias="resetSeconds")]
    tier: str


class CreateCheckoutSession(Model):
    amount_cents: Annotated[
        int,
        Field(
            alias="amountCents",
            description="Integer cents, 50 to 1,000,000.",
            ge=50,
            le=1000000,
        ),
    ]
    success_url: Annotated[
        str,
        Field(
            alias="successUrl",
            description="An absolute http or https URL.",
            max_length=2000,
            min_length=8,
            pattern="^https?://[^\\s/?#]+[^\\s]*$",
        ),
    ]
    cancel_url: Annotated[
        str,
        Field(
            alias="cancelUrl",
            description="An absolute http or https URL.",
            max_length=2000,
            min_length=8,
            pattern="^https?://[^\\s/?#]+[^\\s]*$",
        ),
    ]
    save_payment_method: Annotated[
        bool | None,
        Field(
            alias="savePaymentMethod",
            description="Save the card paid with for auto top-ups: the session gets the billing account's Stripe Customer (made once) and `setup_future_usage: off_session`; once the payment is credited the card becomes the account's saved payment method (`autoTopUp.paymentMethod` of the billing settings).",
        ),
    ] = False


class Checkout(Model):
    id: str
    provider: Literal["stripe", "x402"]
    status: Literal["pending", "completed", "expired", "failed"]
    workspace_id: Annotated[str, Field(alias="workspaceId")]
    billing_account_id: Annotated[str, Field(alias="billingAccountId")]
    amount_cents: Annotated[int, Field(alias="amountCents")]
    currency: Literal["usd"]
    created_at: Annotated[str, Field(alias="createdAt")]
    completed_at: Annotated[str | None, Field(alias="completedAt")]
    failure_reason: Annotated[str | None, Field(alias="failureReason")]
    url: str | None = None
    stripe_session_id: Annotated[str | None, Field(alias="stripeSessionId")] = None
    network: str | None = None
    payer: str | None = None
    nonce: str | None = None
    operation_id: Annotated[str | None, Field(alias="operationId")] = None
    transaction: str | None = None


class X402TopUp(Model):
    amount_cents: Annotated[
        int,
        Field(
            alias="amountCents",
            description="Integer cents, 1 to 1,000,000.",
            ge=1,
            le=1000000,
        ),
    ]


class X402Accepted(Model):
    id: str
    kind: str
    status: Literal["queued", "running", "succeeded", "failed"]
    result: dict[str, Any] | None
    error: Annotated[
        dict[str, Any] | None,
        Field(
            description="Set when the operation failed: a business refusal (insufficient balance, unknown account, amount mismatch), never a transient cause."
        ),
    ]
    attempts: Annotated[int, Field(description="Attempts made so far to apply it.")]
    last_error: Annotated[
        dict[str, Any] | None,
        Field(
            alias="lastError",
            description="While it is retried: {title, detail, at} of the transient cause (a lock held by another transaction, a time limit, the database down, a killed worker) that stopped the last attempt.",
        ),
    ]
    next_attempt_at: Annotated[
        str | None,
        Field(
            alias="nextAttemptAt",
            description="While it waits for a retry: when it is tried next.",
        ),
    ]
    created_at: Annotated[str, Field(alias="createdAt")]
    updated_at: Annotated[str, Field(alias="updatedAt")]
    checkout_id: Annotated[str, Field(alias="checkoutId")]


class X402Requirements(Model):
    model_config = ConfigDict(
        extra="allow",
    )
    scheme: Literal["exact"]
    network: str
    asset: str
    amount: Annotated[
        str,
        Field(
            description="Atomic units of the asset, as a decimal string.",
            pattern="^[0-9]+$",
        ),
    ]
    pay_to: Annotated[str, Field(alias="payTo")]
    max_timeout_seconds: Annotated[int, Field(alias="maxTimeoutSeconds")]
    extra: dict[str, Any]


class X402Resource(Model):
    model_config = ConfigDict(
        extra="allow",
    )
    url: str
    description: str
    mime_type: Annotated[str, Field(alias="mimeType")]


class X402PaymentRequired(Model):
    model_config = ConfigDict(
        extra="allow",
    )
    x402_version: Annotated[Literal[2], Field(alias="x402Version")]
    error: str
    resource: X402Resource
    accepts: list[X402Requirements]


class WebhookReceipt(Model):
    received: bool
    duplicate: bool


class WebhookEndpoint(Model):
    id: str
    url: str
    events: list[str]
    description: str | None
    enabled: Annotated[
        bool,
        Field(
            description="false once every attempt failed for 5 days; a delivery retried by hand that succeeds enables it again."
        ),
    ]
    created_at: Annotated[str, Field(alias="createdAt")]


class WebhookEndpointList(Model):
    data: list[WebhookEndpoint]
    next_cursor: Annotated[str | None, Field(alias="nextCursor")]


class CreateWebhookEndpoint(Model):
    url: Annotated[
        str,
        Field(
            description="https on a public address; the name is resolved and each address checked now and at every attempt. http and loopback, private, link-local, shared or reserved addresses are refused (422) unless the service runs with BILLING_WEBHOOKS_ALLOW_PRIVATE=1.",
            max_length=2000,
            min_length=9,
            pattern="^[Hh][Tt][Tt][Pp][Ss]?://[^\\s/?#]+[^\\s]*$",
        ),
    ]
    events: Annotated[
        list[
            Literal[
                "balance.low",
                "balance.depleted",
                "transaction.created",
                "checkout.completed",
                "checkout.failed",
                "operation.failed",
                "grant.expiring",
                "spend_limit.alert",
                "auto_top_up.succeeded",
                "auto_top_up.failed",
            ]
        ],
        Field(
            description="The event types sent to it (at least one).",
            max_length=10,
            min_length=1,
        ),
    ]
    description: Annotated[str, StringConstraints(max_length=500)] | None = None


class CreatedWebhookEndpoint(Model):
    id: str
    url: str
    events: list[str]
    description: str | None
    enabled: Annotated[
        bool,
        Field(
            description="false once every attempt failed for 5 days; a delivery retried by hand that succeeds enables it again."
        ),
    ]
    created_at: Annotated[str, Field(alias="createdAt")]
    secret: Annotated[
        str,
        Field(
            description="whsec_...: the Standard Webhooks signing secret, shown this once."
        ),
    ]


class WebhookDelivery(Model):
    id: str
    event_id: Annotated[
        str,
        Field(
            alias="eventId",
            description="The payload's id and the webhook-id header, the same on every attempt.",
        ),
    ]
    type: str
    status: Literal["pending", "succeeded", "failed"]
    attempts: int
    last_status_code: Annotated[int | None, Field(alias="lastStatusCode")]
    last_error: Annotated[str | None, Field(alias="lastError")]
    next_attempt_at: Annotated[str | None, Field(alias="nextAttemptAt")]


class WebhookDeliveryList(Model):
    data: list[WebhookDelivery]
    next_cursor: Annotated[str | None, Field(alias="nextCursor")]


class CheckoutList(Model):
    data: list[Checkout]
    next_cursor: Annotated[str | None, Field(alias="nextCursor")]


class Health(Model):
    status: str


class Readiness(Model):
    status: str
    checks: dict[str, str]
