"""Idempotency-Key on POST, as domain.services.idempotency's one flow: claim, run, finish or release.

The key is claimed (leased) before the responder runs and its answer stored after it, unless the answer
is 5xx or 402 (released: the retry runs anew). A resource with `settles_idempotency = True` stores its
answer with its own work instead (a queued credit: in the statement that queues it): the middleware leaves it
the claim (`claim(req)`) with the resource's `answer_for(created)` to render the answer, and the responder ends
with `respond()`; should it fail before (a refusal), the middleware stores the refusal as the first answer.
Whatever a keyed request creates, it creates under `scope(req)`. A body the endpoint refuses (400, 413, 422)
claims no key at all, so the corrected request may use the same key.
"""
import json

import falcon
import orjson

from api.errors import Problem, invalid
from api.json_body import MAX_BODY_BYTES, raw_body, read_json
from api.schemas import check_documented_body
from domain.errors import Conflict
from domain.services.idempotency import Claim, IdempotencyService, KeyedRequest, Replay, fingerprint

HEADER = "Idempotency-Key"
_JSON = falcon.media.JSONHandler(dumps=orjson.dumps, loads=orjson.loads)  # as the app renders every answer
REPLAYED_HEADERS = ("Location", "Content-Type")


class IdempotencyKeys:
    def __init__(self, idempotency: IdempotencyService) -> None:
        self._idempotency = idempotency

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource, params) -> None:
        if req.method != "POST":
            return
        key = req.get_header(HEADER)
        if key is None or resource is None or getattr(resource, "public", False):
            return
        if not 1 <= len(key) <= 255 or not key.isprintable():
            raise invalid([{"field": HEADER, "message": "must be 1 to 255 printable characters"}])
        body = _checked_body(req, resource)
        request = KeyedRequest(req.context.caller.name, key, fingerprint(req.method, req.path, body))
        if getattr(resource, "settles_idempotency", False):
            req.context.idempotency = self._idempotency.unclaimed(request, lambda created: rendered(
                *resource.answer_for(created)))
            return
        outcome = self._idempotency.claim(request)
        if isinstance(outcome, Replay):
            send_replay(resp, outcome)
            resp.complete = True
            return
        req.context.idempotency = outcome

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource, req_succeeded: bool) -> None:
        claim: Claim | None = getattr(req.context, "idempotency", None)
        if claim is None or getattr(req.context, "idempotency_settled", False):
            return
        status = _status(resp)
        final = status < 500 and status != 402  # 402 asks for the same request again, paid
        if claim.token is None:  # settles in its own transaction, but failed before it could
            if final:
                self._settle_refusal(resp, claim, status)
            return
        if not final:
            self._idempotency.release(claim)
            return
        body = resp.render_body() or b""
        resp.data = body
        self._idempotency.finish(claim, Replay(status, _replayable(resource, body), _stored_headers(resp)))

    def _settle_refusal(self, resp: falcon.Response, claim: Claim, status: int) -> None:
        """Store the refusal as the key's first answer, or answer as the key's stored answer would."""
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
    """The Idempotency-Key claim of this request, if it has a key: what it creates, it creates under
    `claim.scope`; a settling resource stores its answer under it."""
    return getattr(req.context, "idempotency", None)


def scope(req: falcon.Request) -> str | None:
    found = claim(req)
    return found.scope if found is not None else None


def rendered(status: int, media: object, location: str | None = None) -> Replay:
    """An answer as bytes once, so what is stored for replays is exactly what is sent."""
    headers = {"Content-Type": falcon.MEDIA_JSON} | ({"Location": location} if location else {})
    return Replay(status, _JSON.serialize(media, falcon.MEDIA_JSON).decode(), headers)


def respond(req: falcon.Request, resp: falcon.Response, outcome: object, resource) -> None:
    """A settling resource's answer: the key's stored first answer (a Replay), or its own answer for what
    it created (`resource.answer_for`), which its transaction stored under the key already."""
    req.context.idempotency_settled = True
    if isinstance(outcome, Replay):
        send_replay(resp, outcome)
        return
    answer = rendered(*resource.answer_for(outcome))
    resp.status, resp.data = falcon.code_to_http_status(answer.status), answer.body.encode()
    for name, value in answer.headers.items():
        resp.set_header(name, value)


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
    retry_after = exc.extra.get("retry_after")
    problem = Problem(409, "Conflict", exc.detail, headers={"Retry-After": str(retry_after)} if retry_after else None)
    resp.status = problem.status
    resp.content_type = "application/problem+json"
    resp.data = orjson.dumps(problem.to_dict())
    for name, value in (problem.headers or {}).items():
        resp.set_header(name, value)


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
        return orjson.dumps({name: value for name, value in media.items() if name not in shown_once}).decode()
    return body.decode()


def _checked_body(req: falcon.Request, resource) -> object:
    """The body as JSON, read once and checked (413, 400, 422) before a key is claimed, so a refused body
    claims no key and the corrected request may use it; a resource may allow a larger body."""
    raw_body(req, getattr(resource, "max_body_bytes", MAX_BODY_BYTES))
    body = read_json(req)
    check_documented_body(resource, req)
    return body
