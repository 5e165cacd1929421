"""A webhook receiver on a loopback port, in the test process (threads): records every request and answers as
told, in turn (a status, a delay before it, or a hold until released); it can go down and come back on its port."""
import json
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook, WebhookVerificationError

from tests.processes import free_port, wait_until


@dataclass(frozen=True)
class Answer:
    status: int = 200
    delay: float = 0.0  # seconds before answering (past the service's timeout: a timeout)
    hold: threading.Event | None = None  # answer only once this is set


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]  # lower-case names
    body: bytes
    at: float  # time.monotonic()

    @property
    def event(self) -> dict:
        return json.loads(self.body)

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]

    def verified(self, secret: str) -> dict:
        """The payload, once its Standard Webhooks signature checked out with the endpoint's secret."""
        return Webhook(secret).verify(self.body, self.headers)

    def verifies(self, secret: str) -> bool:
        try:
            self.verified(secret)
        except WebhookVerificationError:
            return False
        return True


class WebhookReceiver:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hooks"
        self._answers: deque[Answer] = deque()
        self._received: list[Received] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def __enter__(self) -> "WebhookReceiver":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "WebhookReceiver":
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                answer = receiver._record(Received({k.lower(): v for k, v in self.headers.items()}, body,
                                                   time.monotonic()))
                if answer.hold is not None:
                    answer.hold.wait(60)
                time.sleep(answer.delay)
                try:
                    self.send_response(answer.status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:  # the service gave up waiting and closed the connection
                    pass

            def log_message(self, *args) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="webhook-receiver", daemon=True).start()
        return self

    def stop(self) -> None:
        """Down: the port refuses connections until start()."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def answer(self, *answers: Answer) -> None:
        """The next requests get these answers, in turn; then 200 again."""
        with self._lock:
            self._answers.extend(answers)

    def _record(self, received: Received) -> Answer:
        with self._lock:
            self._received.append(received)
            return self._answers.popleft() if self._answers else Answer()

    def received(self, type: str | None = None, workspace_id: str | None = None) -> list[Received]:
        with self._lock:
            found = list(self._received)
        return [r for r in found if (type is None or r.event["type"] == type)
                and (workspace_id is None or r.event["workspaceId"] == workspace_id)]

    def wait_for(self, count: int, timeout: float = 30, **filters) -> list[Received]:
        """At least `count` requests matching the filters (type, workspace_id)."""
        return wait_until(lambda: (lambda found: found if len(found) >= count else None)(self.received(**filters)),
                          timeout, f"{count} webhook request(s) {filters}")
