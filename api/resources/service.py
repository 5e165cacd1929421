"""/health, /ready, /openapi.json, /docs"""
from collections.abc import Callable

import falcon

from api import responses as r
from api.doc import doc


class Health:
    public = True

    @doc("200 while the process runs", who="anyone", response=r.Health)
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ok"}


class Ready:
    public = True

    def __init__(self, checks: dict[str, Callable[[], None]]) -> None:
        self._checks = checks

    @doc("200 when the database and the broker answer, else 503 naming the one that failed", who="anyone",
         response=r.Readiness, errors=(503,))
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        results = {}
        for name, check in self._checks.items():
            try:
                check()
                results[name] = "ok"
            except Exception as exc:  # any failure of a dependency makes us not ready
                results[name] = f"unavailable: {type(exc).__name__}"
        ready = all(value == "ok" for value in results.values())
        resp.status = falcon.HTTP_200 if ready else falcon.HTTP_503
        resp.media = {"status": "ready" if ready else "unavailable", "checks": results}


class OpenApi:
    public = True

    def __init__(self, document: Callable[[], dict]) -> None:
        self._document = document

    @doc("This document (OpenAPI 3.1)", who="anyone", media_type="application/json")
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self._document()


class Docs:
    public = True

    def __init__(self, page: Callable[[], str]) -> None:
        self._page = page

    @doc("A human-readable page of this API, served without internet", who="anyone", media_type="text/html")
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_HTML
        resp.text = self._page()
