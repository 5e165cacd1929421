"""Idempotency-Key on POST: the first response (status and body) is replayed for 24 hours.

A resource with `settles_idempotency = True` stores its answer in its own transaction (see
domain.services.idempotency): the middleware leaves it the claim (`claim(req)`), the resource renders
its answer with `answer()` and sends a replay with `send_replay()`. Should it fail instead (a refusal),
the middleware stores the refusal as the first answer here, as for any resource. A body the endpoint
refuses (400, 413, 422) claims no key at all, so the corrected request may use the same key.
"""
import hashlib
import json

import falcon

from api.errors import Problem, invalid
from api.schemas import MAX_BODY_BYTES, check_documented_body, raw_body, read_json
from domain.errors import Conflict
from domain.services.idempotency import Claim, IdempotencyService, Replay

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
        check_documented_body(resource, req)  # a body the endpoint refuses (422) claims no key either
        fingerprint = hashlib.sha256(b"\n".join([req.method.encode(), req.relative_uri.encode(), raw])).hexdigest()
        caller = req.context.caller.name
        if getattr(resource, "settles_idempotency", False):
            req.context.idempotency_claim = Claim(caller, key, fingerprint)
            return
        replay = self._idempotency.begin(caller, key, fingerprint)
        if replay is not None:
            send_replay(resp, replay)
            resp.complete = True
            return
        req.context.idempotency = (caller, key)

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource, req_succeeded: bool) -> None:
        pending = getattr(req.context, "idempotency_claim", None)
        if pending is not None:
            self._settle_unanswered(req, resp, pending)
            return
        claim = getattr(req.context, "idempotency", None)
        if claim is None:
            return
        status = _status(resp)
        if status >= 500 or status == 402:  # 402 asks for the same request again, paid: not a final answer
            self._idempotency.abandon(*claim)
            return
        body = resp.render_body() or b""
        resp.data = body
        self._idempotency.finish(*claim, status, _replayable(resource, body), _stored_headers(resp))

    def _settle_unanswered(self, req: falcon.Request, resp: falcon.Response, claim: Claim) -> None:
        """A settling resource that did not store its answer (it failed): store the failure as the first
        answer, or answer as the key's stored first answer would."""
        if getattr(req.context, "idempotency_settled", False):
            return
        status = _status(resp)
        if status >= 500 or status == 402:  # not a final answer; nothing was stored
            return
        body = resp.render_body() or b""
        resp.data = body
        try:
            replay = self._idempotency.settle(claim, Replay(status, body.decode(), _stored_headers(resp)))
        except Conflict as exc:
            _conflict(resp, exc)
            return
        if replay is not None:
            send_replay(resp, replay)


def claim(req: falcon.Request) -> Claim | None:
    """The Idempotency-Key claim a settling resource stores its answer under, if the request has a key."""
    return getattr(req.context, "idempotency_claim", None)


def answer(resp: falcon.Response, status: int, media: object, *, location: str | None = None) -> Replay:
    """Render the resource's answer once, so what is stored for replays is exactly what is sent."""
    resp.status = falcon.code_to_http_status(status)
    if location is not None:
        resp.location = location
    resp.media = media
    body = resp.render_body() or b""
    resp.data = body
    return Replay(status, body.decode(), _stored_headers(resp))


def settled(req: falcon.Request) -> None:
    """The resource's transaction stored its answer (or found the one to replay): nothing left to do."""
    req.context.idempotency_settled = True


def send_replay(resp: falcon.Response, replay: Replay) -> None:
    _reset(resp)
    resp.status = falcon.code_to_http_status(replay.status)
    resp.data = replay.body.encode()
    for name, value in replay.headers.items():
        resp.set_header(name, value)
    resp.set_header("Idempotent-Replayed", "true")


def _conflict(resp: falcon.Response, exc: Conflict) -> None:
    """Answer 409 as the error handlers would have, had the resource raised it."""
    _reset(resp)
    problem = Problem(409, "Conflict", exc.detail)
    resp.status = problem.status
    resp.content_type = "application/problem+json"
    resp.text = json.dumps(problem.to_dict())


def _reset(resp: falcon.Response) -> None:
    resp.media = None
    resp.data = None
    resp.text = None
    for name in REPLAYED_HEADERS:
        resp.delete_header(name)


def _status(resp: falcon.Response) -> int:
    return int(str(resp.status).split()[0]) if not isinstance(resp.status, int) else resp.status


def _stored_headers(resp: falcon.Response) -> dict:
    return {name: resp.get_header(name) for name in REPLAYED_HEADERS if resp.get_header(name)}


def _replayable(resource, body: bytes) -> str:
    """The body stored for replays, less the fields a resource shows only once (a new user's API key: the
    service keeps it only as a hash)."""
    shown_once = getattr(resource, "shown_once", ())
    media = json.loads(body) if shown_once and body else None
    if isinstance(media, dict) and any(name in media for name in shown_once):
        return json.dumps({name: value for name, value in media.items() if name not in shown_once})
    return body.decode()


def _buffer_body(req: falcon.Request, limit: int) -> bytes:
    """The body, read once and checked (413, 400) before a key is claimed; a resource may allow more."""
    raw_body(req, limit)
    read_json(req)
    return raw_body(req)
