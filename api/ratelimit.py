"""The API's own limit: BILLING_API_RATE_LIMIT requests per minute per API key, the operator exempt."""
import falcon

from api.auth import bearer_token, unauthorized
from api.errors import Problem
from domain.models import KeyHolder
from domain.services.rate_limits import RateLimitService
from domain.services.users import UserService, hash_key


class ApiRateLimit:
    """RateLimit-Limit/-Remaining/-Reset on every authenticated answer; 429 with Retry-After past the limit.

    With the limiter's Redis unreachable: failing open, the request goes on (logged, counted); failing
    closed, 503 with Retry-After. Never a 500.

    A KeyHolder's key is not checked yet (its read does that): before a 429 or 503 it is looked up, so an
    unknown key is still answered 401.
    """

    def __init__(self, rate_limits: RateLimitService, users: UserService, per_minute: int) -> None:
        self._rate_limits = rate_limits
        self._users = users
        self._per_minute = per_minute

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource, params) -> None:
        caller = getattr(req.context, "caller", None)
        if self._per_minute <= 0 or caller is None or caller.is_operator:
            return
        key_hash = caller.key_hash if isinstance(caller, KeyHolder) else None
        decision = self._rate_limits.api_request((key_hash or hash_key(bearer_token(req))).hex(),
                                                 self._per_minute)
        if not decision.allowed and key_hash is not None and self._users.authenticate(bearer_token(req)) is None:
            raise unauthorized("the key is unknown or revoked")
        if decision.degraded and not decision.allowed:
            raise Problem(503, "Service Unavailable", "the rate limiter is unavailable; retry shortly",
                          headers={"Retry-After": "1"})
        headers = {"RateLimit-Limit": str(decision.limit), "RateLimit-Remaining": str(decision.remaining),
                   "RateLimit-Reset": str(decision.reset_seconds)}
        if not decision.allowed:
            raise Problem(429, "Too Many Requests", f"more than {decision.limit} requests per minute with this "
                          "API key", headers=headers | {"Retry-After": str(max(1, decision.reset_seconds))})
        resp.set_headers(headers)

