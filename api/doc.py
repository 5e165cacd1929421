"""Responder metadata that the OpenAPI document is built from."""
from collections.abc import Callable
from dataclasses import dataclass, field

from pydantic import BaseModel


@dataclass(frozen=True)
class EndpointDoc:
    summary: str
    who: str
    status: int = 200
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    errors: tuple[int, ...] = ()
    answers: dict[int, tuple[str, type[BaseModel]]] = field(default_factory=dict)  # other non-problem answers
    media_type: str | None = None  # the success answer's type when it has no response model
    notes: str = ""
    headers: dict = field(default_factory=dict)


def doc(summary: str, *, who: str = "user", **kwargs) -> Callable:
    def attach(responder: Callable) -> Callable:
        responder.endpoint_doc = EndpointDoc(summary=summary, who=who, **kwargs)
        return responder
    return attach
