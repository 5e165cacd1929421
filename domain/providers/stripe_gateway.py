"""The Stripe gateway: Checkout Sessions and webhook verification through the official SDK."""
from dataclasses import dataclass

import stripe

from domain.errors import InvalidSignature, ProviderError, Unavailable


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


class StripeGateway:
    def __init__(self, api_key: str, webhook_secret: str | None, api_base: str | None = None,
                 timeout_seconds: float = 10) -> None:
        self._client = stripe.StripeClient(
            api_key, base_addresses={"api": api_base} if api_base else {}, max_network_retries=1,
            http_client=stripe.new_default_http_client(timeout=timeout_seconds))
        self._webhook_secret = webhook_secret

    def create_session(self, *, checkout_id: str, workspace_id: str, billing_account_id: str,
                       amount_cents: int, success_url: str, cancel_url: str) -> Session:
        """One Checkout Session per checkout: our id is the idempotency key, so a retry is the same session."""
        metadata = {"checkout_id": checkout_id, "workspace_id": workspace_id,
                    "billing_account_id": billing_account_id}
        params = {
            "mode": "payment", "client_reference_id": checkout_id, "metadata": metadata,
            "success_url": success_url, "cancel_url": cancel_url,
            "payment_intent_data": {"metadata": metadata},
            "line_items": [{"quantity": 1, "price_data": {
                "currency": "usd", "unit_amount": amount_cents,
                "product_data": {"name": "Billing credit top-up"}}}],
        }
        return self._call(lambda: self._client.v1.checkout.sessions.create(
            params=params, options={"idempotency_key": f"checkout-{checkout_id}"}))

    def retrieve_session(self, session_id: str) -> Session:
        return self._call(lambda: self._client.v1.checkout.sessions.retrieve(session_id))

    def expire_session(self, session_id: str) -> Session:
        return self._call(lambda: self._client.v1.checkout.sessions.expire(session_id))

    def parse_event(self, payload: bytes, signature: str | None) -> Event:
        """Verify Stripe-Signature over the raw bytes (default 300 s tolerance) and read the event."""
        if not self._webhook_secret:
            raise ProviderError("STRIPE_WEBHOOK_SECRET is not configured")
        if not signature:
            raise InvalidSignature("the Stripe-Signature header is missing")
        try:
            event = stripe.Webhook.construct_event(payload, signature, self._webhook_secret)
        except stripe.SignatureVerificationError:
            raise InvalidSignature("the Stripe-Signature does not match, or is too old") from None
        except ValueError:
            raise InvalidSignature("the webhook body is not a Stripe event") from None
        data = event.to_dict()
        return Event(id=data["id"], type=data["type"], object=data["data"]["object"])

    @staticmethod
    def _call(request) -> Session:
        try:
            return _session(request())
        except (stripe.APIConnectionError, stripe.RateLimitError) as exc:
            raise Unavailable(f"Stripe did not answer: {exc.user_message or type(exc).__name__}") from exc
        except stripe.StripeError as exc:
            raise ProviderError(f"Stripe answered {exc.http_status}: {exc.user_message or type(exc).__name__}") from exc
