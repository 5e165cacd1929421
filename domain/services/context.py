"""What every service is built with."""
from collections.abc import Callable
from dataclasses import dataclass

from domain.store.uow import UnitOfWork

Enqueue = Callable[..., bool]  # enqueue(task_name, **kwargs) -> sent?; never raises: the outbox covers a miss


@dataclass(frozen=True)
class Config:
    intro_credit_cents: int = 1000


@dataclass(frozen=True)
class Context:
    uow: Callable[[], UnitOfWork]
    enqueue: Enqueue
    config: Config
