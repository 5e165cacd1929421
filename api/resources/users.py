"""/users"""
import falcon

from api import responses as r, schemas, views
from api.doc import doc
from domain.services.users import UserService


class Users:
    shown_once = ("apiKey",)  # never stored for an Idempotency-Key replay

    def __init__(self, users: UserService) -> None:
        self._users = users

    @doc("Create a user with a default billing account and its introductory credit", who="operator",
         status=201, body=schemas.CreateUser, response=r.CreatedUserShape, errors=(401, 403, 409, 422),
         notes="The API key is returned once and kept only as a hash: a replay under the same Idempotency-Key "
               "answers the user without `apiKey`. Emails are unique, compared case-insensitively.")
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = schemas.load(schemas.CreateUser, req)
        user, api_key = self._users.create(req.context.caller, body.email, body.name)
        resp.status, resp.location = falcon.HTTP_201, f"/users/{user.id}"
        resp.media = views.user(user) | {"apiKey": api_key}


class Me:
    def __init__(self, users: UserService) -> None:
        self._users = users

    @doc("The calling user", response=r.UserShape, errors=(401, 403))
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = views.user(self._users.me(req.context.caller))
