"""The metrics port and the /metrics endpoint; the exporter itself is injected (Prometheus in production)."""
import hmac
from collections.abc import Callable
from dataclasses import dataclass

import falcon

from api.doc import doc
from api.errors import Problem


@dataclass(frozen=True)
class MetricsPort:
    observe_request: Callable[[str, str, int, float], None]  # method, route template, status, seconds
    render: Callable[[], tuple[str, bytes]]  # content type, exposition text
    token: str | None = None  # BILLING_METRICS_TOKEN: when set, /metrics wants `Authorization: Bearer <it>`


NO_METRICS = MetricsPort(lambda *_: None, lambda: ("text/plain; version=0.0.4", b""))


class Metrics:
    public = True

    def __init__(self, port: MetricsPort) -> None:
        self._port = port

    @doc("Prometheus text: requests, latencies, tasks, queue depth, outbox backlog, ledger postings, "
         "checkouts, rate-limit decisions", who="anyone, or with BILLING_METRICS_TOKEN set only a scraper "
         "sending `Authorization: Bearer <that token>`", media_type="text/plain", errors=(401,))
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        if self._port.token is not None:
            _, _, given = (req.get_header("Authorization") or "").partition(" ")
            if not hmac.compare_digest(given.strip().encode(), self._port.token.encode()):
                raise Problem(401, "Unauthorized", "send Authorization: Bearer <BILLING_METRICS_TOKEN>",
                              headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
        resp.content_type, resp.data = self._port.render()
