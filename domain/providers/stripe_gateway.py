"""The Stripe gateway: Checkout Sessions, Customers, saved cards, off-session PaymentIntents and webhook
verification, through the official SDK."""
import json
import logging
import math
import re
from dataclasses import dataclass

import stripe

from domain.errors import InvalidEvent, InvalidSignature, NotConfigured, ProviderError, Unavailable
from domain.money import CURRENCY

log = logging.getLogger(__name__)

SESSION_EVENTS = ("checkout.session.completed", "checkout.session.async_payment_succeeded",
                  "checkout.session.async_payment_failed", "checkout.session.expired")
INTENT_EVENTS = ("payment_intent.succeeded", "payment_intent.payment_failed")
MAX_ID_LENGTH = 255
# Stripe's events nest far less. The JSON parser recurses, and a library we load (py_ecc, under x402) lifts
# the recursion limit so high that a deep enough body would overflow the C stack rather than raise.
MAX_DEPTH = 64
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACKET = re.compile(r"[\[\]{}]")
# A NUL or a lone surrogate reaches a parsed string only through an escape: json.loads refuses raw control
# characters, and the UTF-8 decode refuses encoded surrogates.
_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")


@dataclass(frozen=True)
class Session:
    id: str
    url: str | None
    status: str | None  # open | complete | expired
    payment_status: str | None  # paid | unpaid | no_payment_required
    amount_total: int | None
    currency: str | None
    payment_intent: str | None
    checkout_id: str | None  # our id, from client_reference_id


@dataclass(frozen=True)
class Intent:
    """A PaymentIntent, or what a declined confirmation told of it."""
    id: str | None
    status: str  # succeeded | processing | requires_payment_method | requires_action | canceled | ...
    amount: int | None
    currency: str | None
    metadata: dict
    failure_code: str | None = None  # card_declined, authentication_required, ...
    failure_message: str | None = None


@dataclass(frozen=True)
class Card:
    """A saved card: the PaymentMethod and the Customer it is attached to."""
    payment_method_id: str
    customer_id: str | None
    brand: str | None
    last4: str | None


@dataclass(frozen=True)
class Event:
    id: str
    type: str
    object: dict


def _session(obj) -> Session:
    data = obj if isinstance(obj, dict) else obj.to_dict()
    intent = data.get("payment_intent")
    return Session(id=data["id"], url=data.get("url"), status=data.get("status"),
                   payment_status=data.get("payment_status"), amount_total=data.get("amount_total"),
                   currency=data.get("currency"), checkout_id=data.get("client_reference_id"),
                   payment_intent=intent if isinstance(intent, str) or intent is None else intent.get("id"))


def session_from_event(event: Event) -> Session:
    return _session(event.object)


def session_checkout_id(obj: dict) -> str | None:
    """The checkout id of ours a session object names (its client_reference_id), read before it is checked."""
    value = obj.get("client_reference_id")
    return value if isinstance(value, str) else None


def _data(obj) -> dict:
    return obj if isinstance(obj, dict) else obj.to_dict()


def _intent(obj) -> Intent:
    data = _data(obj)
    error = data.get("last_payment_error") or {}
    return Intent(id=data.get("id"), status=data.get("status") or "unknown", amount=data.get("amount"),
                  currency=data.get("currency"), metadata=dict(data.get("metadata") or {}),
                  failure_code=error.get("code"), failure_message=error.get("message"))


def intent_from_event(event: Event) -> Intent:
    return _intent(event.object)


def _customer_id(obj) -> str:
    return _data(obj)["id"]


def _printable(value) -> bool:
    return type(value) is str and 0 < len(value) <= MAX_ID_LENGTH and value.isprintable()


def _optional_str(value) -> bool:
    return value is None or type(value) is str


def _cents(value) -> bool:
    return type(value) is int and 0 <= value < 2**63


_ID = (_printable, f"1 to {MAX_ID_LENGTH} printable characters")
_CENTS = (_cents, "a whole number of cents, 0 or more")
_OPTIONAL_CENTS = (lambda v: v is None or _cents(v), "a whole number of cents, 0 or more, or null")
_OPTIONAL_STR = (_optional_str, "a string or null")
_OPTIONAL_OBJECT = (lambda v: v is None or isinstance(v, dict), "a JSON object or null")
_SESSION_FIELDS = {"id": _ID, "amount_total": _OPTIONAL_CENTS, "currency": _OPTIONAL_STR,
                   "client_reference_id": _OPTIONAL_STR, "payment_intent": _OPTIONAL_STR, "status": _OPTIONAL_STR,
                   "payment_status": _OPTIONAL_STR, "url": _OPTIONAL_STR}
# The fields we read of the objects of the events we act on, with the types Stripe documents for them.
_INTENT_FIELDS = {"id": _ID, "amount": _CENTS, "currency": _OPTIONAL_STR, "status": _OPTIONAL_STR,
                  "metadata": _OPTIONAL_OBJECT, "last_payment_error": _OPTIONAL_OBJECT}
OBJECT_FIELDS = dict.fromkeys(SESSION_EVENTS, _SESSION_FIELDS) | dict.fromkeys(INTENT_EVENTS, _INTENT_FIELDS) | {
    "charge.refunded": {"id": _ID, "amount_refunded": _CENTS, "payment_intent": _OPTIONAL_STR}}


def check_object(event_type: str, obj) -> None:
    """An object of an event type we act on must have the fields we read, of the right types."""
    if not isinstance(obj, dict):
        raise InvalidEvent("the event has no data.object, or it is not a JSON object")
    for field, (ok, wanted) in OBJECT_FIELDS.get(event_type, {}).items():
        if not ok(obj.get(field)):
            raise InvalidEvent(f"data.object.{field} of a {event_type} event must be {wanted}")


def _too_deep(text: str) -> bool:
    """Whether [ or { nest deeper than MAX_DEPTH outside strings, found before parsing."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return False
    depth = 0
    for bracket in _BRACKET.findall(_STRING.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        if depth > MAX_DEPTH:
            return True
    return False


def _unstorable(value) -> bool:
    """A NUL or an unpaired surrogate in a string, or a number that is not finite: jsonb refuses them."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack += [*item.keys(), *item.values()]
        elif isinstance(item, list):
            stack += item
        elif isinstance(item, str) and ("\x00" in item or _not_utf8(item)):
            return True
        elif isinstance(item, float) and not math.isfinite(item):
            return True
    return False


def _not_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _loads(text: str) -> tuple[object, bool]:
    """The parsed body, and whether it may hold a value jsonb refuses (_unstorable then walks data.object to be
    sure): an escaped NUL or surrogate, or a number that is not finite. Most bodies hold none, and are not walked."""
    nonfinite = []

    def number(token: str) -> float:
        value = float(token)
        if not math.isfinite(value):
            nonfinite.append(token)
        return value
    data = json.loads(text, parse_float=number, parse_constant=number)
    return data, bool(nonfinite) or ("\\u" in text and _ESCAPE.search(text) is not None)


def _event(data, maybe_unstorable: bool) -> Event:
    """The event in a verified body, or InvalidEvent saying what is wrong with it."""
    if not isinstance(data, dict):
        raise InvalidEvent("the webhook body is not a JSON object")
    if not _printable(data.get("id")):
        raise InvalidEvent(f"the event's id must be {_ID[1]}")
    if not _printable(data.get("type")):
        raise InvalidEvent(f"the event's type must be {_ID[1]}")
    obj = data["data"].get("object") if isinstance(data.get("data"), dict) else None
    check_object(data["type"], obj)
    if maybe_unstorable and _unstorable(obj):
        raise InvalidEvent("the event's data.object holds a NUL character, an unpaired surrogate or a "
                           "number that is not finite")
    return Event(id=data["id"], type=data["type"], object=obj)


def _timed_out(exc: Exception) -> bool:
    """Whether the SDK's connection error was a timeout: its HTTP client's own exception is the cause."""
    cause = exc.__cause__
    return isinstance(cause, TimeoutError) or "Timeout" in type(cause).__name__


def configured(gateway: "StripeGateway | None") -> "StripeGateway":
    """The gateway of a deployment that configured Stripe; else NotConfigured (503) naming the setting."""
    if gateway is None:
        raise NotConfigured("Stripe is not configured (STRIPE_API_KEY)")
    return gateway


class StripeGateway:
    def __init__(self, api_key: str, webhook_secret: str | None, api_base: str | None = None,
                 timeout_seconds: float = 10) -> None:
        self._client = stripe.StripeClient(
            api_key, base_addresses={"api": api_base} if api_base else {}, max_network_retries=1,
            http_client=stripe.new_default_http_client(timeout=timeout_seconds))
        self._webhook_secret = webhook_secret

    def create_session(self, *, checkout_id: str, workspace_id: str, billing_account_id: str,
                       amount_cents: int, success_url: str, cancel_url: str, customer_id: str | None = None) -> Session:
        """One Checkout Session per checkout: our id is the idempotency key, so a retry is the same session.
        With a customer, the card paid with is saved on it for off-session payments."""
        metadata = {"checkout_id": checkout_id, "workspace_id": workspace_id,
                    "billing_account_id": billing_account_id}
        saving = {"setup_future_usage": "off_session"} if customer_id else {}
        params = {
            "mode": "payment", "client_reference_id": checkout_id, "metadata": metadata,
            "success_url": success_url, "cancel_url": cancel_url,
            "payment_intent_data": {"metadata": metadata, **saving},
            **({"customer": customer_id} if customer_id else {}),
            "line_items": [{"quantity": 1, "price_data": {
                "currency": CURRENCY, "unit_amount": amount_cents,
                "product_data": {"name": "Billing credit top-up"}}}],
        }
        return self._call(lambda: self._client.v1.checkout.sessions.create(
            params=params, options={"idempotency_key": f"checkout-{checkout_id}"}))

    def retrieve_session(self, session_id: str) -> Session:
        return self._call(lambda: self._client.v1.checkout.sessions.retrieve(session_id))

    def expire_session(self, session_id: str) -> Session:
        return self._call(lambda: self._client.v1.checkout.sessions.expire(session_id))

    def create_customer(self, billing_account_id: str) -> str:
        """The billing account's Stripe Customer; the account id is the idempotency key, so racing callers get one."""
        params = {"description": f"billing account {billing_account_id}",
                  "metadata": {"billing_account_id": billing_account_id}}
        return self._call(lambda: self._client.v1.customers.create(
            params=params, options={"idempotency_key": f"customer-{billing_account_id}"}), _customer_id)

    def card_of_payment(self, payment_intent_id: str) -> Card | None:
        """The card a payment was made with (None when it has no card): its PaymentIntent, then its PaymentMethod."""
        intent = self._call(lambda: self._client.v1.payment_intents.retrieve(payment_intent_id), _data)
        method_id = intent.get("payment_method")
        method_id = method_id if isinstance(method_id, str) or method_id is None else method_id.get("id")
        if method_id is None:
            return None
        method = self._call(lambda: self._client.v1.payment_methods.retrieve(method_id), _data)
        card = method.get("card") or {}
        customer = method.get("customer") or intent.get("customer")
        return Card(payment_method_id=method_id, brand=card.get("brand"), last4=card.get("last4"),
                    customer_id=customer if isinstance(customer, str) or customer is None else customer.get("id"))

    def charge_off_session(self, *, customer_id: str, payment_method_id: str, amount_cents: int,
                           idempotency_key: str, metadata: dict) -> Intent:
        """Confirm a PaymentIntent on a saved card without the payer present. A decline (card_declined,
        authentication_required, ...) is an Intent that failed, not an error: Stripe answers 402 and tells why."""
        params = {"amount": amount_cents, "currency": CURRENCY, "customer": customer_id,
                  "payment_method": payment_method_id, "confirm": True, "off_session": True, "metadata": metadata,
                  "description": "Auto top-up"}
        try:
            return self._call(lambda: self._client.v1.payment_intents.create(
                params=params, options={"idempotency_key": idempotency_key}), _intent)
        except ProviderError as exc:
            declined = exc.__cause__
            if not isinstance(declined, stripe.CardError):
                raise
            found = _intent(declined.error.payment_intent) if declined.error.payment_intent else None
            return Intent(id=found.id if found else None, status=found.status if found else "requires_payment_method",
                          amount=amount_cents, currency=CURRENCY, metadata=metadata,
                          failure_code=declined.code or "card_error", failure_message=declined.user_message)

    def retrieve_intent(self, payment_intent_id: str) -> Intent:
        return self._call(lambda: self._client.v1.payment_intents.retrieve(payment_intent_id), _intent)

    def parse_event(self, payload: bytes, signature: str | None) -> Event:
        """Verify Stripe-Signature over the raw bytes (default 300 s tolerance), then read the event: a
        correctly signed body that is not a well-formed event is refused too, so it is never stored."""
        if not self._webhook_secret:
            raise NotConfigured("Stripe webhooks are not configured (STRIPE_WEBHOOK_SECRET)")
        if not signature:
            raise InvalidSignature("the Stripe-Signature header is missing")
        try:
            stripe.WebhookSignature.verify_header(payload, signature, self._webhook_secret,
                                                  stripe.Webhook.DEFAULT_TOLERANCE)
        except stripe.SignatureVerificationError:
            raise InvalidSignature("the Stripe-Signature does not match, or is too old") from None
        except ValueError:
            raise InvalidEvent("the webhook body is not UTF-8") from None
        text = payload.decode("utf-8")
        if _too_deep(text):
            raise InvalidEvent(f"the webhook body nests deeper than {MAX_DEPTH} levels")
        try:
            data, maybe_unstorable = _loads(text)
        except (ValueError, RecursionError):
            raise InvalidEvent("the webhook body is not JSON") from None
        return _event(data, maybe_unstorable)

    @staticmethod
    def _call(request, convert=_session):
        """One SDK call, its answer converted. A failure's detail names Stripe only: the SDK's message may carry
        an address (a proxy's, a stand-in's); the log keeps it whole."""
        try:
            return convert(request())
        except stripe.StripeError as exc:
            log.warning("a Stripe request failed: %s: %s", type(exc).__name__, exc)
            if isinstance(exc, stripe.APIConnectionError):
                why = "timed out" if _timed_out(exc) else "connection failed"
                raise Unavailable(f"Stripe did not answer ({why})") from exc
            if isinstance(exc, stripe.RateLimitError):
                raise Unavailable("Stripe is limiting our requests (HTTP 429)") from exc
            verb = "refused" if exc.http_status and 400 <= exc.http_status < 500 else "failed"
            status = f" (HTTP {exc.http_status})" if exc.http_status else ""
            raise ProviderError(f"Stripe {verb} the request{status}") from exc
