"""The client's retries against a scripted loopback stand-in: what is sent again, after how long, and what is not."""
import json
import threading
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from billing_client import BillingClient, Conflict, ConnectionFailed, InvalidInput, RateLimited, ServerError
from billing_client._retries import Retries, retry_after

from tests.processes import free_port

OPERATION = {"id": "op_1", "kind": "credit", "status": "queued", "result": None, "error": None, "attempts": 0,
             "lastError": None, "nextAttemptAt": None, "createdAt": "2026-11-27T12:00:00Z",
             "updatedAt": "2026-11-27T12:00:00Z"}


def problem(status: int, detail: str, headers: dict | None = None, **extra) -> tuple[int, dict, dict]:
    titles = {409: "Conflict", 422: "Unprocessable Content", 429: "Too Many Requests", 503: "Service Unavailable"}
    body = {"type": "about:blank", "title": titles[status], "status": status, "detail": detail} | extra
    return status, headers or {}, body


class ScriptedApi:
    """Answers each request with the next scripted (status, headers, body); records what came, and when."""

    def __init__(self, *answers: tuple[int, dict, dict]) -> None:
        self.answers = list(answers)
        self.requests: list[tuple[float, str, str, dict]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def keys(self) -> list[str | None]:
        return [headers.get("Idempotency-Key") for _, _, _, headers in self.requests]

    def _handler(self):
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _answer(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                api.requests.append((time.monotonic(), self.command, self.path, dict(self.headers)))
                status, headers, body = api.answers.pop(0)
                data = json.dumps(body).encode()
                self.send_response(status)
                kind = "application/problem+json" if status >= 400 else "application/json"
                for name, value in ({"Content-Type": kind, "Content-Length": str(len(data))} | headers).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

        return Handler

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def no_backoff(monkeypatch):
    """Backoff without its pauses, where a test is about what is sent, not when (Retry-After still waits)."""
    monkeypatch.setattr(Retries, "backoff", lambda self, attempt: 0.01)


@pytest.fixture
def scripted():
    servers = []

    def start(*answers) -> ScriptedApi:
        servers.append(ScriptedApi(*answers))
        return servers[-1]
    yield start
    for server in servers:
        server.close()


def test_a_429_is_sent_again_after_its_retry_after_with_the_same_idempotency_key(scripted):
    api = scripted(problem(429, "past 60 requests per minute for this API key", {"Retry-After": "1"}),
                   (202, {}, OPERATION))
    with BillingClient(api.url, "key") as client:
        operation = client.add_credits("ws_1", 2500)
    assert operation.id == "op_1" and operation.last_error is None
    (first, *_), (second, *_) = api.requests
    assert second - first >= 1.0
    assert len(set(api.keys())) == 1 and api.keys()[0] is not None


def test_a_key_still_in_progress_and_server_errors_are_retried_under_one_key(scripted, no_backoff):
    api = scripted(problem(409, "a request with this Idempotency-Key is still in progress; retry shortly",
                           {"Retry-After": "1"}),
                   problem(503, "the database is unreachable"), (500, {}, {}), (202, {}, OPERATION))
    with BillingClient(api.url, "key") as client:
        assert client.add_credits("ws_1", 2500, idempotency_key="grant-1").id == "op_1"
    assert api.keys() == ["grant-1"] * 4


def test_each_call_gets_its_own_key(scripted):
    api = scripted((202, {}, OPERATION), (202, {}, OPERATION))
    with BillingClient(api.url, "key") as client:
        client.add_credits("ws_1", 100)
        client.add_credits("ws_1", 100)
    assert len(set(api.keys())) == 2


def test_other_4xx_answers_raise_at_once(scripted):
    api = scripted(problem(409, "this Idempotency-Key was used with a different request"),
                   problem(422, "the request has invalid values", errors=[{"field": "amountCents",
                                                                           "message": "must be at least 1"}]))
    with BillingClient(api.url, "key") as client, pytest.raises(Conflict):
        client.add_credits("ws_1", 100, idempotency_key="k")
    with BillingClient(api.url, "key") as client, pytest.raises(InvalidInput) as raised:
        client.add_credits("ws_1", 0)
    assert [(e.field, e.message) for e in raised.value.errors] == [("amountCents", "must be at least 1")]
    assert len(api.requests) == 2


def test_a_retry_after_longer_than_the_client_waits_raises_at_once(scripted):
    api = scripted(problem(429, "past 60 requests per minute for this API key", {"Retry-After": "120"}))
    with BillingClient(api.url, "key", max_retry_wait=30) as client, pytest.raises(RateLimited) as raised:
        client.balance("ws_1")
    assert raised.value.status == 429 and raised.value.headers["Retry-After"] == "120"
    assert len(api.requests) == 1


def test_retries_end_with_the_last_answer(scripted, no_backoff):
    api = scripted(*[problem(503, "the broker is unreachable")] * 2)
    with BillingClient(api.url, "key", max_retries=1) as client, pytest.raises(ServerError) as raised:
        client.balance("ws_1")
    assert raised.value.status == 503 and raised.value.detail == "the broker is unreachable"
    assert len(api.requests) == 2


def test_a_connection_refused_is_retried_then_raised(no_backoff):
    attempts = []

    class Counting(httpx.HTTPTransport):
        def handle_request(self, request):
            attempts.append(request.headers.get("Idempotency-Key"))
            return super().handle_request(request)

    with (BillingClient(f"http://127.0.0.1:{free_port()}", "key", max_retries=2, transport=Counting()) as client,
          pytest.raises(ConnectionFailed)):
        client.add_credits("ws_1", 100)
    assert len(attempts) == 3 and len(set(attempts)) == 1


def test_backoff_doubles_up_to_its_cap_with_jitter():
    retries = Retries(base=0.5, cap=4.0)
    for attempt, ceiling in enumerate([0.5, 1.0, 2.0, 4.0, 4.0, 4.0]):
        assert ceiling / 2 <= retries.backoff(attempt) <= ceiling


def test_retry_after_is_read_as_seconds_or_as_a_date():
    def answer(value: str) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": value})

    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert retry_after(answer("7")) == 7.0
    assert 28 <= retry_after(answer(later)) <= 30
    assert retry_after(answer("soon")) is None
