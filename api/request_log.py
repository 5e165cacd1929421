"""One log line per request, and an X-Request-Id that follows the work into the worker."""
import logging
import time
import uuid

import falcon

from domain import tracing

log = logging.getLogger("billing.http")
HEADER = "X-Request-Id"


def _accepted(value: str | None) -> str | None:
    if value and len(value) <= 128 and value.isascii() and value.isprintable():
        return value
    return None


class RequestLog:
    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.request_id = _accepted(req.get_header(HEADER)) or uuid.uuid4().hex
        req.context.started = time.perf_counter()
        req.context.trace_token = tracing.request_id.set(req.context.request_id)

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource, req_succeeded: bool) -> None:
        resp.set_header(HEADER, req.context.request_id)
        status = resp.status if isinstance(resp.status, int) else int(str(resp.status)[:3])
        log.info("request", extra={
            "method": req.method, "route": req.uri_template or "unmatched", "status": status,
            "duration_ms": round((time.perf_counter() - req.context.started) * 1000, 2)})
        tracing.request_id.reset(req.context.trace_token)
