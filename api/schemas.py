"""Request schemas: they validate bodies and queries, and the OpenAPI document is built from them."""
import re
from datetime import datetime
from typing import Annotated, Literal

import falcon
from pydantic import (AfterValidator, AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field,
                      ValidationError, field_validator)
from pydantic.alias_generators import to_camel

from api.errors import invalid
from api.json_body import read_json
from domain import times, usage
from domain.money import MAX_MOVEMENT_CENTS
from domain.grants import DEFAULT_PRIORITY
from domain.models import AutoTopUpSettings
from domain.names import ENTRY_KINDS, GRANT_CATEGORIES, GRANT_STATUSES, HOLD_STATUSES, WEBHOOK_EVENT_TYPES


class Body(BaseModel):
    """A JSON body: camelCase names only, exact types (no "5" for 5, no true for 1), no unknown fields."""

    model_config = ConfigDict(alias_generator=to_camel, extra="forbid", strict=True)

    @field_validator("*")
    @classmethod
    def _no_nul(cls, value: object) -> object:
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value


class Query(BaseModel):
    """Query-string parameters, which arrive as text and are converted. An unknown one is refused: a typo
    (`?knd=usage`, `?form=...`) would otherwise answer silently for another filter or window."""

    model_config = ConfigDict(extra="forbid")


Name = Annotated[str, Field(min_length=1, max_length=200)]
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})")


def _rfc3339_text(value: object) -> object:
    """Only RFC 3339 text: pydantic alone would also read numbers ("0.5", 1700000000) as Unix times."""
    if value is not None and not (isinstance(value, str) and _RFC3339.fullmatch(value)):
        raise ValueError("must be an RFC 3339 date-time with an offset, like 2026-11-27T12:00:00Z")
    return value


def _representable(value: datetime) -> datetime:
    """In UTC, and within 1970-9999 there: earlier or later instants overflow the service's date arithmetic."""
    utc = times.in_range(value)
    if utc is None:
        raise ValueError("must be from 1970-01-01T00:00:00Z to 9999-12-31T23:59:59Z once converted to UTC")
    return utc


Timestamp = Annotated[AwareDatetime, BeforeValidator(_rfc3339_text), AfterValidator(_representable)]
USER_ID, ACCOUNT_ID = "usr_6f1c2b9a4e7d4c0b8a5e3d2f1a0b9c8d", "ba_0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e"


def examples(*bodies: dict) -> ConfigDict:
    """Request examples for the OpenAPI document and the /docs page (a test validates each)."""
    return ConfigDict(json_schema_extra={"examples": list(bodies)})
Id = Annotated[str, Field(min_length=1, max_length=100)]
MovementCents = Annotated[int, Field(gt=0, le=MAX_MOVEMENT_CENTS,
                                     description="Integer cents, 1 to 100,000,000.")]


class CreateUser(Body):
    model_config = examples({"email": "ada@example.com", "name": "Ada Lovelace"})

    email: Annotated[str, Field(min_length=3, max_length=254, pattern=r"^[^@\s]+@[^@\s]+$")]
    name: Name | None = None


class CreateWorkspace(Body):
    model_config = examples({"name": "Acme"}, {"name": "Acme research", "billingAccountId": ACCOUNT_ID})

    name: Name
    billing_account_id: Id | None = None


class AddMember(Body):
    model_config = examples({"userId": USER_ID, "role": "member"})

    user_id: Id
    role: Literal["admin", "member"]


class CreateBillingAccount(Body):
    model_config = examples({"name": "Project Apollo"})

    name: Name


class LinkBillingAccount(Body):
    model_config = examples({"billingAccountId": ACCOUNT_ID})

    billing_account_id: Id


class AddCredits(Body):
    model_config = examples({"amountCents": 2500, "description": "Goodwill credit"},
                            {"amountCents": 5000, "description": "Launch promotion", "category": "promotional",
                             "priority": 10, "expiresAt": "2099-12-31T00:00:00Z"})

    amount_cents: MovementCents
    description: Annotated[str, Field(max_length=500)] = ""
    category: Literal[GRANT_CATEGORIES] = Field("promotional", description=(  # type: ignore[valid-type]
        "The grant's category: `paid` or `promotional` (default)."))
    priority: Annotated[int, Field(ge=0, le=100, description=(
        "0-100, default 50: debits draw from lower priorities first."))] = DEFAULT_PRIORITY
    expires_at: Annotated[Timestamp | None, Field(strict=False, description=(
        "RFC 3339, in the future: what is left of the grant then is debited as `expiry`. Default: never."))] = None


HttpUrl = Annotated[str, Field(min_length=8, max_length=2000, pattern=r"^https?://[^\s/?#]+[^\s]*$",
                               description="An absolute http or https URL.")]


class CreateCheckoutSession(Body):
    """CreateCheckoutSessionDto."""

    model_config = examples({"amountCents": 2000, "successUrl": "https://app.example.com/billing/done",
                             "cancelUrl": "https://app.example.com/billing"},
                            {"amountCents": 2000, "successUrl": "https://app.example.com/billing/done",
                             "cancelUrl": "https://app.example.com/billing", "savePaymentMethod": True})
    amount_cents: Annotated[int, Field(ge=50, le=1_000_000, description="Integer cents, 50 to 1,000,000.")]
    success_url: HttpUrl
    cancel_url: HttpUrl
    save_payment_method: bool = Field(False, description=(
        "Save the card paid with for auto top-ups: the session gets the billing account's Stripe Customer "
        "(made once) and `setup_future_usage: off_session`; once the payment is credited the card becomes the "
        "account's saved payment method (`autoTopUp.paymentMethod` of the billing settings)."))


class Window(Query):
    since: Timestamp | None = Field(None, alias="from", description="RFC 3339, 1970 to 9999 in UTC; inclusive.")
    until: Timestamp | None = Field(None, alias="to", description="RFC 3339, 1970 to 9999 in UTC; exclusive.")


class BalanceQuery(Query):
    as_of: Timestamp | None = Field(None, alias="asOf", description=(
        "RFC 3339, 1970 to 9999 in UTC: the balance right after the last transaction created at or before this "
        "instant (an instant still to come reads as now; before the account existed: 404)."))


class PageQuery(Query):
    limit: int = Field(50, ge=1, le=200)
    cursor: Annotated[str, Field(max_length=200)] | None = None


class TransactionsQuery(Window, PageQuery):
    kind: Literal[ENTRY_KINDS] | None = None  # type: ignore[valid-type]
    billing_account_id: Id | None = Field(None, alias="billingAccountId")


class CreateHold(Body):
    model_config = examples({"amountCents": 500, "description": "agent run 42", "reference": "run-42",
                             "expiresInSeconds": 900}, {"amountCents": 2000})

    amount_cents: MovementCents
    description: Annotated[str, Field(max_length=500)] = ""
    reference: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    expires_in_seconds: Annotated[int, Field(ge=60, le=604800, description=(
        "60 to 604800 (a week), default 3600: after it the hold stops reserving (a beat job releases it)."))] = 3600


class CaptureHold(Body):
    model_config = examples({"amountCents": 320}, {"amountCents": 0})

    amount_cents: Annotated[int, Field(ge=0, le=MAX_MOVEMENT_CENTS, description=(
        "0 to the hold's amount: debited as usage once; the rest is released. 0 releases it all."))]


class PutSpendLimit(Body):
    model_config = examples({"monthlyLimitCents": 50000, "alertPercents": [50, 80, 100]}, {"monthlyLimitCents": None})

    monthly_limit_cents: Annotated[int | None, Field(ge=0, le=10**12, description=(
        "What usage and captures may spend per UTC calendar month, in cents; null lifts the limit."))]
    alert_percents: Annotated[list[Annotated[int, Field(ge=1, le=100)]], Field(max_length=10, description=(
        "Steps (1-100, percent of the limit) whose crossing is recorded once a month; default [50, 80, 100]."))
    ] | None = None


class AutoTopUp(Body):
    enabled: bool
    threshold_cents: Annotated[int, Field(ge=0, le=MAX_MOVEMENT_CENTS, description=(
        "A debit (usage, a hold's capture) that leaves the workspace's default account below this starts a "
        "top-up, while a card is saved for the account. 0 to 100,000,000."))]
    amount_cents: Annotated[int, Field(ge=500, le=1_000_000, description=(
        "What each top-up charges the saved card and credits: 500 to 1,000,000 cents."))]
    max_per_day: Annotated[int, Field(ge=1, le=20, description=(
        "Top-ups of the account started per UTC day at most (failed ones count), 1 to 20; default 3."))] = 3

    def domain(self) -> AutoTopUpSettings:
        return AutoTopUpSettings(enabled=self.enabled, threshold_cents=self.threshold_cents,
                                 amount_cents=self.amount_cents, max_per_day=self.max_per_day)


class PutBillingSettings(Body):
    model_config = examples(
        {"lowBalanceCents": 1000},
        {"autoTopUp": {"enabled": True, "thresholdCents": 500, "amountCents": 2000, "maxPerDay": 3}},
        {"lowBalanceCents": None, "autoTopUp": None})

    low_balance_cents: Annotated[int | None, Field(ge=0, le=10**12, description=(
        "`balance.low` is sent when a debit takes the default account's balance from at or above this to below "
        "it; null: never. Left out: unchanged."))] = None
    auto_top_up: Annotated[AutoTopUp | None, Field(description=(
        "Auto top-up; null: not set up (off). Left out: unchanged."))] = None


class CreateWebhookEndpoint(Body):
    model_config = examples({"url": "https://hooks.example.com/billing",
                             "events": ["balance.low", "transaction.created"], "description": "alerts"})

    url: Annotated[str, Field(min_length=9, max_length=2000, pattern=r"^[Hh][Tt][Tt][Pp][Ss]?://[^\s/?#]+[^\s]*$",
                              description=(
        "https on a public address; the name is resolved and each address checked now and at every attempt. http "
        "and loopback, private, link-local, shared or reserved addresses are refused (422) unless the service runs "
        "with BILLING_WEBHOOKS_ALLOW_PRIVATE=1."))]
    events: Annotated[list[Literal[WEBHOOK_EVENT_TYPES]], Field(  # type: ignore[valid-type]
        min_length=1, max_length=len(WEBHOOK_EVENT_TYPES), description="The event types sent to it (at least one).")]
    description: Annotated[str, Field(max_length=500)] | None = None


class HoldsQuery(PageQuery):
    status: Literal[HOLD_STATUSES] | None = None  # type: ignore[valid-type]


class GrantsQuery(PageQuery):
    status: Literal[GRANT_STATUSES] | None = None  # type: ignore[valid-type]
    billing_account_id: Id | None = Field(None, alias="billingAccountId")


USAGE_MAX_BODY_BYTES = 512 * 1024  # 1000 events of the largest size fit


class UsageEvent(Body):
    event_id: Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$",
                                   description="Printable ASCII without spaces; the event is debited once "
                                               "per workspace and eventId (also after the workspace's default "
                                               "account changed, among the accounts linked to it).")]
    metric: Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:/-]+$")]
    quantity: Annotated[int, Field(ge=0, le=10**12)]
    amount_cents: MovementCents
    occurred_at: Annotated[Timestamp | None, Field(strict=False, description=(
        "RFC 3339 with an offset, 1970 or later in UTC; default: when the request was accepted. At most "
        "5 minutes ahead."))] = None

    def domain(self) -> usage.Event:
        return usage.Event(event_id=self.event_id, metric=self.metric, quantity=self.quantity,
                           amount_cents=self.amount_cents, occurred_at=self.occurred_at)


class RecordUsage(Body):
    model_config = examples({"events": [
        {"eventId": "req-7f3a-0001", "metric": "api.requests", "quantity": 1000, "amountCents": 40},
        {"eventId": "job-9c1e", "metric": "gpu.seconds", "quantity": 360, "amountCents": 1250,
         "occurredAt": "2026-11-27T12:00:00Z"}]})

    events: Annotated[list[UsageEvent], Field(min_length=1, max_length=1000)]


class UsageOverviewQuery(Window):
    granularity: Literal["day", "hour"] = "day"


class CheckRateLimit(Body):
    model_config = examples({"cost": 1}, {})

    cost: Annotated[int, Field(ge=1, le=100_000, description="Requests to consume, default 1.")] = 1


def _field_errors(exc: ValidationError, aliases: bool = True) -> list[dict]:
    out = []
    for error in exc.errors(include_url=False):
        path = ""
        for part in error["loc"]:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        out.append({"field": path or "body", "message": error["msg"]})
    return out


def load(model: type[Body], req: falcon.Request) -> Body:
    data = read_json(req)
    if not isinstance(data, dict):
        raise invalid([{"field": "body", "message": "the body must be a JSON object"}])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid(_field_errors(exc)) from None


def check_documented_body(resource: object, req: falcon.Request) -> None:
    """Validate the body as the responder will, against the model its EndpointDoc names (422 on failure):
    the Idempotency-Key middleware does so first, so a refused body claims no key, as one that is not JSON."""
    responder = getattr(resource, f"on_{req.method.lower()}", None)
    model = getattr(getattr(responder, "endpoint_doc", None), "body", None)
    if model is not None:
        load(model, req)


def query(model: type[Query], req: falcon.Request) -> Query:
    params = {key: value for key, value in req.params.items()}
    if any(isinstance(value, list) for value in params.values()):
        raise invalid([{"field": next(k for k, v in params.items() if isinstance(v, list)),
                        "message": "give this parameter once"}])
    try:
        return model.model_validate(params)
    except ValidationError as exc:
        raise invalid(_field_errors(exc)) from None


def window(q: Window) -> tuple[datetime | None, datetime | None]:
    if q.since and q.until and q.since >= q.until:
        raise invalid([{"field": "to", "message": "must be after from"}])
    return q.since, q.until
