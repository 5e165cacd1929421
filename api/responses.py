"""Response shapes, for the OpenAPI document and for tests that check real answers against it."""
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from domain.money import CURRENCY
from domain.names import (CHECKOUT_STATUSES, ENTRY_KINDS, GRANT_CATEGORIES, GRANT_SOURCES, GRANT_STATUSES,
                          HOLD_STATUSES, OPERATION_STATUSES)


class Shape(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FieldError(Shape):
    field: str
    message: str


class ProblemShape(Shape):
    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldError] | None = None


class UserShape(Shape):
    id: str
    email: str
    name: str | None
    defaultBillingAccountId: str | None
    createdAt: str


class CreatedUserShape(UserShape):
    apiKey: str


class BillingAccountShape(Shape):
    id: str
    name: str
    ownerUserId: str
    isUserDefault: bool
    currency: Literal[CURRENCY]  # type: ignore[valid-type]
    balanceCents: int
    createdAt: str


class BillingAccountDetailShape(BillingAccountShape):
    linkedWorkspaceIds: list[str]


class LinkedAccountShape(BillingAccountShape):
    isWorkspaceDefault: bool
    linkedAt: str


class WorkspaceShape(Shape):
    id: str
    name: str
    ownerUserId: str
    defaultBillingAccountId: str
    createdAt: str


class MemberShape(Shape):
    userId: str
    role: Literal["admin", "member"]


class NextExpiryShape(Shape):
    amountCents: int = Field(description="What the grants expiring then still hold.")
    expiresAt: str


class BalanceShape(Shape):
    billingAccountId: str
    workspaceId: str | None = None
    balanceCents: int
    availableCents: int = Field(description="The balance less what active holds reserve: what a usage event or a "
                                            "new hold may spend.")
    paidCents: int = Field(description="What active paid grants (Stripe, x402, paid operator credits) hold.")
    promotionalCents: int = Field(description="What active promotional grants hold. While the balance is at least "
                                              "0, paidCents + promotionalCents = balanceCents; below 0 both are 0.")
    nextExpiry: NextExpiryShape | None = Field(description="The soonest expiresAt of an active grant and what the "
                                                           "grants expiring then hold; null when none expires.")
    currency: Literal[CURRENCY]  # type: ignore[valid-type]
    asOf: str = Field(description="The instant described: now, or the asOf asked for (one still to come reads "
                                  "as now).")


class TransactionShape(Shape):
    id: str
    billingAccountId: str
    workspaceId: str | None
    kind: Literal[ENTRY_KINDS]  # type: ignore[valid-type]
    amountCents: int
    balanceAfterCents: int
    description: str
    reference: str | None
    createdAt: str


class GrantShape(Shape):
    id: str
    billingAccountId: str
    source: Literal[GRANT_SOURCES]  # type: ignore[valid-type]
    category: Literal[GRANT_CATEGORIES]  # type: ignore[valid-type]
    amountCents: int
    remainingCents: int = Field(description="What is left to spend; 0 once depleted or expired.")
    priority: int = Field(description="0-100: debits draw from lower priorities first, then from the earliest "
                                      "expiresAt (none last), then from the oldest grant.")
    expiresAt: str | None
    status: Literal[GRANT_STATUSES]  # type: ignore[valid-type]
    createdAt: str


class GrantPage(Shape):
    data: list[GrantShape]
    nextCursor: str | None


class HoldShape(Shape):
    id: str
    workspaceId: str
    billingAccountId: str
    amountCents: int
    capturedCents: int
    status: Literal[HOLD_STATUSES]  # type: ignore[valid-type]
    description: str
    expiresAt: str
    reference: str | None
    createdAt: str
    settledAt: str | None = Field(description="When it stopped reserving: released, expired, or its capture "
                                              "applied; null while it reserves.")
    captureOperationId: str | None = Field(description="The operation that applies its capture, once captured.")


class HoldPage(Shape):
    data: list[HoldShape]
    nextCursor: str | None


class SpendAlertShape(Shape):
    percent: int
    limitCents: int
    spentCents: int = Field(description="The month's spending once the movement that crossed the step was applied.")
    crossedAt: str


class SpendLimitShape(Shape):
    workspaceId: str
    monthlyLimitCents: int | None
    spentCents: int = Field(description="Usage and captures debited this UTC month.")
    reservedCents: int = Field(description="What the workspace's unsettled holds reserve; it counts against the "
                                           "limit as well.")
    periodStart: str
    periodEnd: str = Field(description="The next month's start (exclusive).")
    alertPercents: list[int]
    alerts: list[SpendAlertShape] = Field(description="The steps crossed this month, lowest first.")


class PaymentMethodShape(Shape):
    brand: str | None = Field(description="The card's brand as Stripe names it: visa, mastercard, amex, ...")
    last4: str | None


class AutoTopUpShape(Shape):
    enabled: bool
    thresholdCents: int | None = Field(description="null while auto top-up is not set up")
    amountCents: int | None = Field(description="null while auto top-up is not set up")
    maxPerDay: int
    paymentMethod: PaymentMethodShape | None = Field(description=(
        "The card saved for the workspace's default account (by a checkout with savePaymentMethod); null: none."))


class BillingSettingsShape(Shape):
    workspaceId: str
    lowBalanceCents: int | None
    autoTopUp: AutoTopUpShape


class WebhookEndpointShape(Shape):
    id: str
    url: str
    events: list[str]
    description: str | None
    enabled: bool = Field(description="false once every attempt failed for 5 days; a delivery retried by hand that "
                                      "succeeds enables it again.")
    createdAt: str


class CreatedWebhookEndpointShape(WebhookEndpointShape):
    secret: str = Field(description="whsec_...: the Standard Webhooks signing secret, shown this once.")


class WebhookEndpointList(Shape):
    data: list[WebhookEndpointShape]
    nextCursor: str | None


class WebhookDeliveryShape(Shape):
    id: str
    eventId: str = Field(description="The payload's id and the webhook-id header, the same on every attempt.")
    type: str
    status: Literal["pending", "succeeded", "failed"]
    attempts: int
    lastStatusCode: int | None
    lastError: str | None
    nextAttemptAt: str | None


class WebhookDeliveryList(Shape):
    data: list[WebhookDeliveryShape]
    nextCursor: str | None


class KindTotalShape(Shape):
    count: int
    amountCents: int


class SummaryShape(Shape):
    billingAccountId: str
    workspaceId: str | None = None
    currency: Literal[CURRENCY]  # type: ignore[valid-type]
    balanceCents: int
    totalCreditedCents: int
    totalDebitedCents: int
    transactionCount: int
    lastTransactionAt: str | None
    byKind: dict[str, KindTotalShape]


class OperationShape(Shape):
    id: str
    kind: str
    status: Literal[OPERATION_STATUSES]  # type: ignore[valid-type]
    result: dict | None
    error: dict | None = Field(description="Set when the operation failed: a business refusal (insufficient "
                                            "balance, unknown account, amount mismatch), never a transient cause.")
    attempts: int = Field(description="Attempts made so far to apply it.")
    lastError: dict | None = Field(description="While it is retried: {title, detail, at} of the transient cause "
                                               "(a lock held by another transaction, a time limit, the database "
                                               "down, a killed worker) that stopped the last attempt.")
    nextAttemptAt: str | None = Field(description="While it waits for a retry: when it is tried next.")
    createdAt: str
    updatedAt: str


class TransactionPage(Shape):
    data: list[TransactionShape]
    nextCursor: str | None


class WorkspaceList(Shape):
    data: list[WorkspaceShape]


class BillingAccountList(Shape):
    data: list[BillingAccountShape]


class LinkedAccountList(Shape):
    data: list[LinkedAccountShape]


class Health(Shape):
    status: str


class Readiness(Shape):
    status: str
    checks: dict[str, str]


class CheckoutShape(Shape):
    id: str
    provider: Literal["stripe", "x402"]
    status: Literal[CHECKOUT_STATUSES]  # type: ignore[valid-type]
    workspaceId: str
    billingAccountId: str
    amountCents: int
    currency: Literal[CURRENCY]  # type: ignore[valid-type]
    createdAt: str
    completedAt: str | None
    failureReason: str | None
    url: str | None = None
    stripeSessionId: str | None = None
    network: str | None = None
    payer: str | None = None
    nonce: str | None = None
    operationId: str | None = None
    transaction: str | None = None


class CheckoutList(Shape):
    data: list[CheckoutShape]
    nextCursor: str | None


class WebhookReceipt(Shape):
    received: bool
    duplicate: bool


class X402AcceptedShape(OperationShape):
    checkoutId: str


class X402Shape(BaseModel):
    """x402 protocol objects: the protocol may add fields, so unknown ones are allowed."""

    model_config = ConfigDict(extra="allow")


class X402ResourceShape(X402Shape):
    url: str
    description: str
    mimeType: str


class X402RequirementsShape(X402Shape):
    scheme: Literal["exact"]
    network: str
    asset: str
    amount: str = Field(pattern=r"^[0-9]+$", description="Atomic units of the asset, as a decimal string.")
    payTo: str
    maxTimeoutSeconds: int
    extra: dict


class X402PaymentRequiredShape(X402Shape):
    """The x402 v2 PaymentRequired (also base64-encoded in the PAYMENT-REQUIRED header)."""

    x402Version: Literal[2]
    error: str
    resource: X402ResourceShape
    accepts: list[X402RequirementsShape]


class UsagePeriodShape(Shape):
    periodStart: str
    usageCents: int
    quantity: int
    events: int


class MetricUsageShape(Shape):
    metric: str
    quantity: int
    usageCents: int


class UsageOverviewShape(Shape):
    workspaceId: str
    billingAccountId: str
    since: str = Field(alias="from")
    until: str = Field(alias="to")
    granularity: Literal["day", "hour"]
    totalUsageCents: int
    series: list[UsagePeriodShape]
    byMetric: list[MetricUsageShape]


class RequestLimits(Shape):
    requestsPerMinute: int


class RateLimitStatusShape(Shape):
    workspaceId: str
    billingAccountId: str
    tier: str
    limits: RequestLimits
    remaining: int
    resetSeconds: int
    computedAt: str
    reason: str


class RateLimitDecisionShape(Shape):
    allowed: bool
    limit: int
    remaining: int
    resetSeconds: int
    tier: str
