"""Every error leaves as RFC 9457 problem+json; domain errors map to statuses in one table."""
import logging

import falcon
import orjson

from domain import errors
from domain.models import KeyHolder

log = logging.getLogger(__name__)

STATUS = {
    errors.Unauthenticated: (401, "Unauthorized"),
    errors.NotFound: (404, "Not Found"),
    errors.Forbidden: (403, "Forbidden"),
    errors.Conflict: (409, "Conflict"),
    errors.InsufficientFunds: (409, "Insufficient Funds"),
    errors.NotAffordable: (402, "Payment Required"),
    errors.InvalidInput: (422, "Unprocessable Content"),
    errors.Malformed: (400, "Bad Request"),
    errors.Unavailable: (503, "Service Unavailable"),
    errors.NotConfigured: (503, "Service Unavailable"),  # before ProviderError: the first class that matches
    errors.ProviderError: (502, "Bad Gateway"),
    errors.InvalidSignature: (400, "Bad Request"),
    errors.InvalidEvent: (400, "Bad Request"),
}


class Problem(falcon.HTTPError):
    """An HTTP error with a problem+json body."""

    def __init__(self, status: int, title: str, detail: str, *, errors: list[dict] | None = None,
                 headers: dict | None = None, type: str = "about:blank") -> None:
        super().__init__(falcon.code_to_http_status(status), title=title, description=detail,
                         headers=headers)
        self.field_errors = errors
        self.type = type

    def to_dict(self, obj_type=dict):
        body = {"type": self.type, "title": self.title, "status": self.status_code,
                "detail": self.description or self.title}
        if self.field_errors is not None:
            body["errors"] = self.field_errors
        return body


BEARER_CHALLENGE = 'Bearer realm="billing"'
RATE_LIMIT_HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")
# Problem types of our own (a hold refused with 402): relative references, resolved against the service's address.
PROBLEM_TYPES = "/problems/"

_FALCON_DETAIL = {404: "no endpoint has this path (see /openapi.json)",
                  405: "this endpoint does not take this method (the Allow header lists those it takes)"}


def invalid(field_errors: list[dict], detail: str = "the request has invalid values") -> Problem:
    return Problem(422, "Unprocessable Content", detail, errors=field_errors)


def _domain_error(req, resp, exc: errors.DomainError, params) -> None:
    status, title = next(v for k, v in STATUS.items() if isinstance(exc, k))
    field_errors = [{"field": exc.field, "message": exc.detail}] if isinstance(exc, errors.InvalidInput) else None
    # A dependency that did not answer may in seconds; a provider not configured (503 too) waits for an operator.
    retry_after = exc.extra.get("retry_after") or (5 if isinstance(exc, errors.Unavailable) else None)
    headers = {"Retry-After": str(retry_after)} if retry_after else None
    if status == 401:  # a key found unknown by the read itself (domain.models.KeyHolder): as api.auth answers
        headers = {"WWW-Authenticate": BEARER_CHALLENGE}
        for name in RATE_LIMIT_HEADERS:  # counted before the key was known; they describe no caller
            resp.delete_header(name)
    problem = exc.extra.get("problem")
    _http_error(req, resp, Problem(status, title, exc.detail, errors=field_errors, headers=headers,
                                   type=PROBLEM_TYPES + problem if problem else "about:blank"), params)


def _http_error(req, resp, exc: falcon.HTTPError, params) -> None:
    if exc.status_code in (400, 422) and _key_unchecked_and_unknown(req):
        exc = Problem(401, "Unauthorized", "the key is unknown or revoked",
                      headers={"WWW-Authenticate": BEARER_CHALLENGE})
        for name in RATE_LIMIT_HEADERS:
            resp.delete_header(name)
    if not isinstance(exc, Problem):  # Falcon's own (an unknown route, a method the route lacks): titled as ours
        title = falcon.code_to_http_status(exc.status_code)[4:]
        exc = Problem(exc.status_code, title, exc.description or _FALCON_DETAIL.get(exc.status_code, title),
                      headers=exc.headers)
    resp.status = exc.status
    resp.content_type = "application/problem+json"
    resp.data = orjson.dumps(exc.to_dict())  # as every other answer
    for name, value in (exc.headers or {}).items():
        resp.set_header(name, value)


def _unexpected(req, resp, exc: Exception, params) -> None:
    log.exception("unhandled error on %s %s", req.method, req.path)
    _http_error(req, resp, Problem(500, "Internal Server Error",
                                   "the service failed to answer; nothing was changed by this request"), params)


def _key_unchecked_and_unknown(req) -> bool:
    """A request refused for its input (400, 422) before its read checked the caller's key (a KeyHolder, see
    api.auth): an unknown key must still be answered 401, so it is looked up now."""
    check = getattr(req.context, "key_is_live", None)
    return check is not None and isinstance(getattr(req.context, "caller", None), KeyHolder) and not check()


def install(app: falcon.App) -> None:
    app.add_error_handler(Exception, _unexpected)
    app.add_error_handler(falcon.HTTPError, _http_error)
    app.add_error_handler(errors.DomainError, _domain_error)
