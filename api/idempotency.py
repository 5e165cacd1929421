"""Idempotency-Key on POST: the first response (status and body) is replayed for 24 hours."""
import hashlib

import falcon

from api.errors import invalid
from api.schemas import MAX_BODY_BYTES, raw_body, read_json
from domain.services.idempotency import IdempotencyService

HEADER = "Idempotency-Key"
REPLAYED_HEADERS = ("Location", "Content-Type")


class IdempotencyKeys:
    def __init__(self, idempotency: IdempotencyService) -> None:
        self._idempotency = idempotency

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource, params) -> None:
        key = req.get_header(HEADER)
        if req.method != "POST" or key is None or resource is None or getattr(resource, "public", False):
            return
        if not 1 <= len(key) <= 255 or not key.isprintable():
            raise invalid([{"field": HEADER, "message": "must be 1 to 255 printable characters"}])
        raw = _buffer_body(req, getattr(resource, "max_body_bytes", MAX_BODY_BYTES))
        fingerprint = hashlib.sha256(b"\n".join([req.method.encode(), req.relative_uri.encode(), raw])).hexdigest()
        caller = req.context.caller.name
        replay = self._idempotency.begin(caller, key, fingerprint)
        if replay is not None:
            resp.status = falcon.code_to_http_status(replay.status)
            resp.data = replay.body.encode()
            for name, value in replay.headers.items():
                resp.set_header(name, value)
            resp.set_header("Idempotent-Replayed", "true")
            resp.complete = True
            return
        req.context.idempotency = (caller, key)

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource, req_succeeded: bool) -> None:
        claim = getattr(req.context, "idempotency", None)
        if claim is None:
            return
        status = int(str(resp.status).split()[0]) if not isinstance(resp.status, int) else resp.status
        if status >= 500 or status == 402:  # 402 asks for the same request again, paid: not a final answer
            self._idempotency.abandon(*claim)
            return
        body = resp.render_body() or b""
        resp.data = body
        headers = {name: resp.get_header(name) for name in REPLAYED_HEADERS if resp.get_header(name)}
        self._idempotency.finish(*claim, status, body.decode(), headers)


def _buffer_body(req: falcon.Request, limit: int) -> bytes:
    """The body, read once and checked (413, 400) before a key is claimed; a resource may allow more."""
    raw_body(req, limit)
    read_json(req)
    return raw_body(req)
