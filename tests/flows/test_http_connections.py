"""HTTP/1.1 over real sockets to the API under granian (worker/http_server.py, as `billing api` runs it): chunked
bodies, Connection: close for an unread body, and idle keep-alive connections that stay usable."""
import http.client
import json
import socket
import time

import pytest
from sqlalchemy import text

from tests.factories import OPERATOR_TOKEN
from tests.processes import Stack

OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}", "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def stack(database_url, tmp_path_factory):
    """The API alone (as `billing api` runs it): these tests need no worker."""
    stack = Stack(database_url, tmp_path_factory.mktemp("http"))
    try:
        stack.start(worker=False)
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def credits_path(stack) -> str:
    owner = stack.api.new_user()
    return f"/workspaces/{stack.api.new_workspace(owner)['id']}/billing/credits"


def connect(stack) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", int(stack.api.client.base_url.rsplit(":", 1)[1])), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def request(sock, method: str, path: str, headers: dict | None = None, body: bytes = b"",
            chunk: int | None = None) -> None:
    """Send one request: the body with Content-Length, or in `chunk`-byte chunks (Transfer-Encoding: chunked)."""
    head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"] + [f"{k}: {v}" for k, v in (headers or {}).items()]
    if chunk:
        head.append("Transfer-Encoding: chunked")
        pieces = [body[i:i + chunk] for i in range(0, len(body), chunk)]
        body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    else:
        head.append(f"Content-Length: {len(body)}")
    try:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server may answer and close before an unread body is all sent: the answer is still there


def response(sock) -> tuple[int, http.client.HTTPMessage, dict | None]:
    answer = http.client.HTTPResponse(sock)
    answer.begin()
    body = answer.read()
    return answer.status, answer.headers, json.loads(body) if body else None


def closed_by_server(sock) -> bool:
    """Whether the server closes the connection (within the socket's timeout) after its answer."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def closed_by_server_now(sock) -> bool:
    """Whether the server has closed the connection already, without waiting."""
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    finally:
        sock.setblocking(True)
        sock.settimeout(10)


def credit_body(cents: int, description: str = "chunked or not") -> bytes:
    return json.dumps({"amountCents": cents, "description": description}).encode()


def stored_payload(engine, operation_id: str) -> dict:
    with engine.connect() as conn:
        return conn.execute(text("SELECT payload FROM operations WHERE id = :id"), {"id": operation_id}).scalar()


def test_a_chunked_credit_is_accepted_exactly_as_the_same_body_with_content_length(stack, credits_path, engine):
    answers = []
    for chunk in (None, 7):
        with connect(stack) as sock:
            request(sock, "POST", credits_path, OPERATOR, credit_body(1234), chunk=chunk)
            answers.append(response(sock))
    (plain_status, _, plain), (chunked_status, headers, chunked) = answers
    assert (plain_status, chunked_status) == (202, 202), (plain, chunked)
    assert (chunked["kind"], chunked["status"]) == (plain["kind"], plain["status"])
    assert stored_payload(engine, chunked["id"]) == stored_payload(engine, plain["id"])
    assert headers["Connection"] is None  # HTTP/1.1: the connection lives unless an answer says close


def test_a_chunked_body_over_64_kib_is_too_large_and_the_connection_closes(stack, credits_path):
    with connect(stack) as sock:
        request(sock, "POST", credits_path, OPERATOR, credit_body(5, "x" * 70_000), chunk=8192)
        status, headers, body = response(sock)
        assert (status, headers["Content-Type"], body["status"]) == (413, "application/problem+json", 413)
        assert headers["Connection"] == "close" and closed_by_server(sock)


# granian ends the body where its chunk framing breaks (no error reaches the app) and closes the connection
# after the answer: a break before any chunk is an empty body (400); after a whole chunk, the body is that chunk,
# here `{}`, refused as a credit without an amount (422).
@pytest.mark.parametrize("framing, status", [(b"zz\r\n{}\r\n0\r\n\r\n", 400), (b"2\r\n{}XX0\r\n\r\n", 422)],
                         ids=["size", "terminator"])
def test_a_chunked_body_with_broken_framing_is_refused_and_the_connection_closes(stack, credits_path, framing,
                                                                                  status):
    with connect(stack) as sock:
        head = [f"POST {credits_path} HTTP/1.1", "Host: 127.0.0.1", "Transfer-Encoding: chunked",
                *(f"{k}: {v}" for k, v in OPERATOR.items())]
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + framing)
        answered, headers, body = response(sock)
        assert (answered, headers["Content-Type"], body["status"]) == (status, "application/problem+json", status)
        assert closed_by_server(sock)


def test_a_body_refused_unread_for_its_size_is_answered_with_connection_close(stack, credits_path):
    with connect(stack) as sock:
        request(sock, "POST", credits_path, OPERATOR, b"{" + b" " * (100 * 1024) + b"}")
        status, headers, body = response(sock)
        assert (status, headers["Content-Type"], body["status"]) == (413, "application/problem+json", 413)
        assert "65536 bytes" in body["detail"] and "Traceback" not in body["detail"]
        assert headers["Connection"] == "close" and closed_by_server(sock)
    with connect(stack) as sock:
        request(sock, "GET", "/health")
        assert response(sock)[0] == 200


def test_an_unauthenticated_post_is_answered_unread_with_connection_close(stack, credits_path):
    with connect(stack) as sock:
        request(sock, "POST", credits_path, {"Content-Type": "application/json"}, credit_body(5))
        status, headers, body = response(sock)
        assert (status, headers["Content-Type"], body["status"]) == (401, "application/problem+json", 401)
        assert headers["Connection"] == "close" and closed_by_server(sock)
    with connect(stack) as sock:
        request(sock, "POST", credits_path, OPERATOR, credit_body(5))
        assert response(sock)[0] == 202


@pytest.mark.parametrize("first, status", [(credit_body(5), 202), (credit_body(0), 422)], ids=["202", "422"])
def test_an_answer_to_a_read_body_keeps_the_connection_for_the_next_request(stack, credits_path, first, status):
    with connect(stack) as sock:
        request(sock, "POST", credits_path, OPERATOR, first)
        answered, headers, _ = response(sock)
        assert (answered, headers["Connection"]) == (status, None)  # HTTP/1.1's default: it lives
        request(sock, "POST", credits_path, OPERATOR, credit_body(6), chunk=5)
        assert response(sock)[0] == 202
        request(sock, "GET", "/health")
        assert response(sock)[0] == 200


def test_a_kept_alive_connection_idle_for_over_3_seconds_still_serves(stack):
    with connect(stack) as sock:
        request(sock, "GET", "/health")
        assert response(sock)[0] == 200
        time.sleep(3.5)  # gunicorn's default closed an idle connection after 2 s; billing's keep-alive is 75 s
        assert not closed_by_server_now(sock)
        request(sock, "GET", "/health")
        assert response(sock)[0] == 200


def test_idle_kept_alive_connections_do_not_hold_the_servers_threads(stack):
    idle = [connect(stack) for _ in range(12)]  # the API under test runs 8 threads
    try:
        for sock in idle:
            request(sock, "GET", "/health")
            assert response(sock)[0] == 200
        with connect(stack) as sock:
            started = time.monotonic()
            request(sock, "GET", "/health")
            assert response(sock)[0] == 200 and time.monotonic() - started < 2
        for sock in idle:
            request(sock, "GET", "/health")
            assert response(sock)[0] == 200
    finally:
        for sock in idle:
            sock.close()
