"""Bearer keys: a user's key or the operator token; the caller lands in req.context.caller."""
import hmac

import falcon

from api.errors import BEARER_CHALLENGE, Problem
from domain.models import OPERATOR_CALLER, KeyHolder
from domain.services.users import UserService, hash_key

MAX_KEY_LENGTH = 200  # longer is no key this service issued


class Authentication:
    """The operator token, compared in constant time; a user's key, looked up (a Caller). A resource that sets
    `checks_key_itself` gets a KeyHolder instead: its read checks the key in its own statement, one round trip."""

    def __init__(self, users: UserService, operator_token: str | None) -> None:
        self._users = users
        self._operator_token = operator_token.encode() if operator_token else None

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource, params) -> None:
        if resource is None or getattr(resource, "public", False):
            return
        token = bearer_token(req)
        if not token:
            raise unauthorized("send Authorization: Bearer <key>")
        if self._operator_token and hmac.compare_digest(token.encode(), self._operator_token):
            req.context.caller = OPERATOR_CALLER
            return
        if len(token) > MAX_KEY_LENGTH:
            raise unauthorized("the key is unknown or revoked")
        if getattr(resource, "checks_key_itself", False) and req.method == "GET":
            req.context.caller = KeyHolder(hash_key(token))
            req.context.key_is_live = lambda: self._users.authenticate(token) is not None  # api.errors
            return
        caller = self._users.authenticate(token)
        if caller is None:
            raise unauthorized("the key is unknown or revoked")
        req.context.caller = caller


def bearer_token(req: falcon.Request) -> str:
    scheme, _, token = (req.get_header("Authorization") or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def unauthorized(detail: str) -> Problem:
    return Problem(401, "Unauthorized", detail, headers={"WWW-Authenticate": BEARER_CHALLENGE})
