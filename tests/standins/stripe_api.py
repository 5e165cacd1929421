"""A loopback stand-in for the parts of Stripe's API we use, reached through the real SDK.

Checkout Sessions: create (form-encoded), retrieve, expire. Customers: create, retrieve. PaymentMethods:
retrieve. PaymentIntents: create (confirmed off session, with a scripted outcome) and retrieve. Every create
honours Idempotency-Key: the same key answers the first answer again, an error included, as Stripe does.
Payments are made by the test (`pay`); a session paid with a customer and
payment_intent_data[setup_future_usage]=off_session saves the card on that customer. Webhooks are signed the
way Stripe signs them (`signed_event`).
"""
import collections
import hashlib
import hmac
import json
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl

# What an off-session PaymentIntent may be scripted to do (script_intents); unscripted ones succeed.
INTENT_OUTCOMES = ("succeeded", "card_declined", "authentication_required")
_DECLINES = {
    "card_declined": ("card_declined", "generic_decline", "Your card was declined."),
    "authentication_required": ("authentication_required", "authentication_required",
                                "Your card was declined. This transaction requires authentication."),
}


def _nest(pairs: list[tuple[str, str]]) -> dict:
    """Stripe's form encoding (a[b][0][c]=v) back into dicts; list indexes become dict keys."""
    out: dict = {}
    for key, value in pairs:
        parts = key.replace("]", "").split("[")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


class StandInError(Exception):
    """An error answer, in Stripe's shape."""

    def __init__(self, status: int, error: dict) -> None:
        super().__init__(error.get("message"))
        self.status, self.error = status, error


def _missing(kind: str, object_id: str) -> StandInError:
    return StandInError(404, {"type": "invalid_request_error", "code": "resource_missing",
                              "message": f"No such {kind}: '{object_id}'"})


class StripeStandIn:
    def __init__(self) -> None:
        self.sessions: dict[str, dict] = {}
        self.customers: dict[str, dict] = {}
        self.payment_methods: dict[str, dict] = {}
        self.intents: dict[str, dict] = {}
        self._session_forms: dict[str, dict] = {}  # each session's create form
        self.answered: dict[str, tuple[int, dict]] = {}  # Idempotency-Key -> the first answer
        self.intent_outcomes: collections.deque[str] = collections.deque()
        self.fail_status = 500
        self.fail_creates = 0  # answer this many next creates with fail_status
        self.delay_seconds = 0.0
        self.delay_creates = 0  # sleep delay_seconds before answering this many next creates
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> "StripeStandIn":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "StripeStandIn":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # Creates, each answered once per Idempotency-Key.

    def create(self, form: dict, idempotency_key: str | None) -> tuple[int, dict]:
        """A Checkout Session (the name tests and callers know it by)."""
        return self._once(idempotency_key, lambda: self._new_session(form))

    def _once(self, idempotency_key: str | None, make) -> tuple[int, dict]:
        with self._lock:
            if idempotency_key in self.answered:
                return self.answered[idempotency_key]
            try:
                answer = 200, make()
            except StandInError as exc:
                answer = exc.status, {"error": exc.error}
            if idempotency_key:
                self.answered[idempotency_key] = answer
            return answer

    def _new_session(self, form: dict) -> dict:
        item = form["line_items"]["0"]
        session_id = f"cs_test_{uuid.uuid4().hex}"
        customer = form.get("customer")
        if customer is not None and customer not in self.customers:
            raise _missing("customer", customer)
        session = {
            "id": session_id, "object": "checkout.session", "mode": form["mode"], "status": "open",
            "payment_status": "unpaid", "amount_total": int(item["price_data"]["unit_amount"]) * int(item["quantity"]),
            "currency": item["price_data"]["currency"], "client_reference_id": form.get("client_reference_id"),
            "metadata": form.get("metadata", {}), "success_url": form["success_url"],
            "cancel_url": form["cancel_url"], "payment_intent": None, "created": int(time.time()),
            "customer": customer, "url": f"https://checkout.stripe.test/c/pay/{session_id}",
        }
        self.sessions[session_id] = session
        self._session_forms[session_id] = form
        return session

    def _new_customer(self, form: dict) -> dict:
        customer = {"id": _id("cus"), "object": "customer", "created": int(time.time()),
                    "description": form.get("description"), "metadata": form.get("metadata", {}),
                    "invoice_settings": {"default_payment_method": None}}
        self.customers[customer["id"]] = customer
        return customer

    def _new_intent(self, form: dict) -> dict:
        customer, method = form.get("customer"), form.get("payment_method")
        if customer not in self.customers:
            raise _missing("customer", str(customer))
        if method not in self.payment_methods or self.payment_methods[method]["customer"] != customer:
            raise StandInError(400, {"type": "invalid_request_error", "code": "resource_missing", "param": "payment_method",
                                     "message": f"No such PaymentMethod: '{method}' on customer '{customer}'"})
        if form.get("confirm") != "true" or form.get("off_session") != "true":
            raise StandInError(400, {"type": "invalid_request_error",
                                     "message": "the stand-in only makes confirmed off-session PaymentIntents"})
        outcome = self.intent_outcomes.popleft() if self.intent_outcomes else "succeeded"
        intent = self._intent(int(form["amount"]), form["currency"], customer, method, form.get("metadata", {}))
        if outcome == "succeeded":
            intent.update(status="succeeded", amount_received=intent["amount"], latest_charge=_id("ch"))
            return intent
        code, decline_code, message = _DECLINES[outcome]
        error = {"type": "card_error", "code": code, "decline_code": decline_code, "message": message,
                 "payment_method": self.payment_methods[method]}
        intent.update(status="requires_payment_method", last_payment_error=error)
        raise StandInError(402, error | {"payment_intent": dict(intent)})

    def _intent(self, amount: int, currency: str, customer: str | None, method: str | None, metadata: dict) -> dict:
        intent = {"id": _id("pi"), "object": "payment_intent", "amount": amount, "amount_received": 0,
                  "currency": currency, "customer": customer, "payment_method": method, "metadata": metadata,
                  "status": "processing", "last_payment_error": None, "latest_charge": None,
                  "created": int(time.time()), "livemode": False}
        self.intents[intent["id"]] = intent
        return intent

    # What the test does in Stripe's place.

    def script_intents(self, *outcomes: str) -> None:
        """The outcomes of the next PaymentIntents created (each one of INTENT_OUTCOMES), in order."""
        assert set(outcomes) <= set(INTENT_OUTCOMES), outcomes
        self.intent_outcomes.extend(outcomes)

    def pay(self, session_id: str, *, paid: bool = True, amount_total: int | None = None,
            card: tuple[str, str] = ("visa", "4242")) -> dict:
        """The payer completes the session (paid, or unpaid while an async method settles) with a card
        (brand, last4), which is saved on the session's customer when the session asked to."""
        with self._lock:
            session = self.sessions[session_id]
            if session["payment_intent"] is None:
                form = self._session_forms[session_id]
                method = self._card(session["customer"], *card)
                intent = self._intent(session["amount_total"], session["currency"], session["customer"], method["id"],
                                      form.get("payment_intent_data", {}).get("metadata", {}))
                intent.update(status="succeeded" if paid else "processing",
                              setup_future_usage=form.get("payment_intent_data", {}).get("setup_future_usage"))
                if intent["setup_future_usage"] == "off_session" and session["customer"]:
                    method["customer"] = session["customer"]
                session["payment_intent"] = intent["id"]
            session.update(status="complete", payment_status="paid" if paid else "unpaid")
            if amount_total is not None:
                session["amount_total"] = amount_total
            return dict(session)

    def _card(self, customer: str | None, brand: str, last4: str) -> dict:
        method = {"id": _id("pm"), "object": "payment_method", "type": "card", "customer": None,
                  "card": {"brand": brand, "last4": last4, "exp_month": 12, "exp_year": 2034},
                  "created": int(time.time())}
        self.payment_methods[method["id"]] = method
        return method

    def settle_async(self, session_id: str) -> dict:
        session = self.sessions[session_id]
        session["payment_status"] = "paid"
        if session["payment_intent"] in self.intents:
            self.intents[session["payment_intent"]]["status"] = "succeeded"
        return dict(session)

    def expire(self, session_id: str) -> dict:
        self.sessions[session_id].update(status="expired", url=None)
        return dict(self.sessions[session_id])

    def intent_event(self, intent_id: str) -> tuple[str, dict]:
        """The event Stripe sends about a PaymentIntent's outcome: its type and object."""
        intent = dict(self.intents[intent_id])
        kind = "payment_intent.succeeded" if intent["status"] == "succeeded" else "payment_intent.payment_failed"
        return kind, intent

    def created_intents(self) -> list[dict]:
        """The off-session PaymentIntents made through the API (not by paying a session), oldest first."""
        paid_sessions = {s["payment_intent"] for s in self.sessions.values()}
        return [dict(i) for i in self.intents.values() if i["id"] not in paid_sessions]

    # HTTP.

    def _get(self, path: str) -> dict:
        for prefix, found, kind in (("/v1/checkout/sessions/", self.sessions, "checkout.session"),
                                    ("/v1/customers/", self.customers, "customer"),
                                    ("/v1/payment_methods/", self.payment_methods, "payment_method"),
                                    ("/v1/payment_intents/", self.intents, "payment_intent")):
            if path.startswith(prefix):
                object_id = path[len(prefix):]
                if object_id not in found:
                    raise _missing(kind, object_id)
                return dict(found[object_id])
        raise StandInError(404, {"type": "invalid_request_error", "message": f"Unrecognized request URL ({path})"})

    _CREATES = {"/v1/checkout/sessions": "_new_session", "/v1/customers": "_new_customer",
                "/v1/payment_intents": "_new_intent"}
    _EXPIRE = re.compile(r"^/v1/checkout/sessions/([^/]+)/expire$")

    def _post(self, path: str, form: dict, idempotency_key: str | None) -> tuple[int, dict]:
        expire = self._EXPIRE.match(path)
        if expire:
            if expire.group(1) not in self.sessions:
                raise _missing("checkout.session", expire.group(1))
            return 200, self.expire(expire.group(1))
        if path not in self._CREATES:
            raise StandInError(404, {"type": "invalid_request_error", "message": f"Unrecognized request URL ({path})"})
        if self.delay_creates:
            self.delay_creates -= 1
            time.sleep(self.delay_seconds)
        if self.fail_creates:
            self.fail_creates -= 1
            return self.fail_status, {"error": {"type": "api_error", "message": "stand-in failure"}}
        return self._once(idempotency_key, lambda: getattr(self, self._CREATES[path])(form))

    def _handler(self):
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _answer(self, status: int, body: dict) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.send_header("Request-Id", f"req_{uuid.uuid4().hex[:14]}")
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self) -> None:
                standin.requests.append(("GET", self.path))
                try:
                    self._answer(200, standin._get(self.path.split("?")[0]))
                except StandInError as exc:
                    self._answer(exc.status, {"error": exc.error})

            def do_POST(self) -> None:
                standin.requests.append(("POST", self.path))
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                try:
                    self._answer(*standin._post(self.path.split("?")[0], _nest(parse_qsl(raw)),
                                                self.headers.get("Idempotency-Key")))
                except StandInError as exc:
                    self._answer(exc.status, {"error": exc.error})

        return Handler


def signed_event(secret: str, event_type: str, obj: dict, *, event_id: str | None = None,
                 timestamp: int | None = None) -> tuple[bytes, str]:
    """A webhook body and its Stripe-Signature header, made as Stripe makes them."""
    payload = json.dumps({"id": event_id or f"evt_{uuid.uuid4().hex[:24]}", "object": "event",
                          "type": event_type, "api_version": "2024-06-20", "created": int(time.time()),
                          "livemode": False, "data": {"object": obj}}).encode()
    return payload, stripe_signature(secret, payload, timestamp)


def stripe_signature(secret: str, payload: bytes, timestamp: int | None = None) -> str:
    """The Stripe-Signature header for these exact bytes: an HMAC-SHA256 of "{t}.{payload}"."""
    stamp = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{stamp}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={stamp},v1={digest}"


def charge_refunded(payment_intent: str, amount_refunded: int, charge_id: str | None = None) -> dict:
    return {"id": charge_id or f"ch_{uuid.uuid4().hex[:24]}", "object": "charge", "payment_intent": payment_intent,
            "amount_refunded": amount_refunded, "refunded": True, "currency": "usd"}
