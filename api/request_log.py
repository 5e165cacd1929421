"""One log line and the request metrics per request, and an X-Request-Id that follows the work into the worker."""
import logging
import secrets
import time

import falcon

from api.metrics import NO_METRICS, MetricsPort
from domain import tracing

log = logging.getLogger("billing.http")
HEADER = "X-Request-Id"


def _accepted(value: str | None) -> str | None:
    if value and len(value) <= 128 and value.isascii() and value.isprintable():
        return value
    return None


class RequestLog:
    """The X-Request-Id, the JSON log line and the metrics (method, route, status, seconds) of every request,
    timed once: one middleware where two each took the time and read the status."""

    def __init__(self, metrics: MetricsPort = NO_METRICS) -> None:
        self._observe = metrics.observe_request

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        # 128 random bits in 32 hex digits, the length of a uuid4's hex at a quarter of its cost
        req.context.request_id = _accepted(req.get_header(HEADER)) or secrets.token_hex(16)
        req.context.started = time.perf_counter()
        req.context.trace_token = tracing.request_id.set(req.context.request_id)

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource, req_succeeded: bool) -> None:
        seconds = time.perf_counter() - req.context.started
        resp.set_header(HEADER, req.context.request_id)
        status = resp.status if isinstance(resp.status, int) else int(str(resp.status)[:3])
        route = req.uri_template or "unmatched"
        self._observe(req.method, route, status, seconds)
        log.info("request", extra={"method": req.method, "route": route, "status": status,
                                   "duration_ms": round(seconds * 1000, 2)})
        tracing.request_id.reset(req.context.trace_token)
