"""Bearer keys: a user's key or the operator token; the caller lands in req.context.caller."""
import hmac

import falcon

from api.errors import Problem
from domain.models import OPERATOR_CALLER
from domain.services.users import UserService


class Authentication:
    def __init__(self, users: UserService, operator_token: str | None) -> None:
        self._users = users
        self._operator_token = operator_token

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource, params) -> None:
        if resource is None or getattr(resource, "public", False):
            return
        scheme, _, token = (req.get_header("Authorization") or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _unauthorized("send Authorization: Bearer <key>")
        if self._operator_token and hmac.compare_digest(token.encode(), self._operator_token.encode()):
            req.context.caller = OPERATOR_CALLER
            return
        caller = self._users.authenticate(token) if len(token) <= 200 else None
        if caller is None:
            raise _unauthorized("the key is unknown or revoked")
        req.context.caller = caller


def _unauthorized(detail: str) -> Problem:
    return Problem(401, "Unauthorized", detail, headers={"WWW-Authenticate": 'Bearer realm="billing"'})
