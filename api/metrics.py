"""Request metrics and the /metrics endpoint; the exporter itself is injected (Prometheus in production)."""
import time
from collections.abc import Callable
from dataclasses import dataclass

import falcon

from api.doc import doc


@dataclass(frozen=True)
class MetricsPort:
    observe_request: Callable[[str, str, int, float], None]  # method, route template, status, seconds
    render: Callable[[], tuple[str, bytes]]  # content type, exposition text


NO_METRICS = MetricsPort(lambda *_: None, lambda: ("text/plain; version=0.0.4", b""))


class RequestMetrics:
    def __init__(self, port: MetricsPort) -> None:
        self._port = port

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.metrics_started = time.perf_counter()

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource, req_succeeded: bool) -> None:
        status = resp.status if isinstance(resp.status, int) else int(str(resp.status)[:3])
        self._port.observe_request(req.method, req.uri_template or "unmatched", status,
                                   time.perf_counter() - req.context.metrics_started)


class Metrics:
    public = True

    def __init__(self, port: MetricsPort) -> None:
        self._port = port

    @doc("Prometheus text: requests, latencies, tasks, queue depth, outbox backlog, ledger postings, "
         "checkouts, rate-limit decisions", who="anyone (scrapers; keep it on the internal network)",
         media_type="text/plain")
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type, resp.data = self._port.render()
