"""A loopback stand-in for the parts of Stripe's API we use, reached through the real SDK.

Checkout Sessions: create (form-encoded, honouring Idempotency-Key), retrieve, expire. Payments are
made by the test (`pay`), and webhooks are signed the way Stripe signs them (`signed_event`).
"""
import hashlib
import hmac
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl


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


class StripeStandIn:
    def __init__(self) -> None:
        self.sessions: dict[str, dict] = {}
        self.by_idempotency_key: dict[str, str] = {}
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

    def create(self, form: dict, idempotency_key: str | None) -> tuple[int, dict]:
        with self._lock:
            if idempotency_key in self.by_idempotency_key:
                return 200, self.sessions[self.by_idempotency_key[idempotency_key]]
            item = form["line_items"]["0"]
            session_id = f"cs_test_{uuid.uuid4().hex}"
            session = {
                "id": session_id, "object": "checkout.session", "mode": form["mode"], "status": "open",
                "payment_status": "unpaid", "amount_total": int(item["price_data"]["unit_amount"]) * int(item["quantity"]),
                "currency": item["price_data"]["currency"], "client_reference_id": form.get("client_reference_id"),
                "metadata": form.get("metadata", {}), "success_url": form["success_url"],
                "cancel_url": form["cancel_url"], "payment_intent": None, "created": int(time.time()),
                "url": f"https://checkout.stripe.test/c/pay/{session_id}",
            }
            self.sessions[session_id] = session
            if idempotency_key:
                self.by_idempotency_key[idempotency_key] = session_id
            return 200, session

    def pay(self, session_id: str, *, paid: bool = True, amount_total: int | None = None) -> dict:
        """The payer completes the session (paid, or unpaid while an async method settles)."""
        session = self.sessions[session_id]
        session.update(status="complete", payment_status="paid" if paid else "unpaid",
                       payment_intent=session["payment_intent"] or f"pi_{uuid.uuid4().hex[:24]}")
        if amount_total is not None:
            session["amount_total"] = amount_total
        return dict(session)

    def settle_async(self, session_id: str) -> dict:
        self.sessions[session_id]["payment_status"] = "paid"
        return dict(self.sessions[session_id])

    def expire(self, session_id: str) -> dict:
        self.sessions[session_id].update(status="expired", url=None)
        return dict(self.sessions[session_id])

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

            def _missing(self) -> None:
                self._answer(404, {"error": {"type": "invalid_request_error", "message": "No such checkout.session"}})

            def do_GET(self) -> None:
                standin.requests.append(("GET", self.path))
                session = standin.sessions.get(self.path.rsplit("/", 1)[-1].split("?")[0])
                self._answer(200, session) if session else self._missing()

            def do_POST(self) -> None:
                standin.requests.append(("POST", self.path))
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                if self.path.endswith("/expire"):
                    session_id = self.path.split("/")[-2]
                    if session_id not in standin.sessions:
                        return self._missing()
                    return self._answer(200, standin.expire(session_id))
                if standin.delay_creates:
                    standin.delay_creates -= 1
                    time.sleep(standin.delay_seconds)
                if standin.fail_creates:
                    standin.fail_creates -= 1
                    return self._answer(standin.fail_status, {"error": {"type": "api_error", "message": "stand-in failure"}})
                status, body = standin.create(_nest(parse_qsl(raw)), self.headers.get("Idempotency-Key"))
                self._answer(status, body)

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
