"""The composition root: one Services per process, built lazily (after any fork)."""
import logging
import os
import threading

from domain.services.context import Config, Context
from domain.services.registry import Services
from domain.store.uow import UnitOfWork, make_engine
from worker import payments, settings as settings_module

log = logging.getLogger(__name__)
_lock = threading.Lock()
_built: dict[int, Services] = {}


def build(settings: settings_module.Settings, enqueue=None, pool_size: int = 5) -> Services:
    engine = make_engine(settings_module.require(settings.database_url, "DATABASE_URL"), pool_size)
    if enqueue is None:
        from worker.queue import enqueue  # the Celery app is only loaded where it is used
    ctx = Context(uow=lambda: UnitOfWork(engine), enqueue=enqueue,
                  config=Config(intro_credit_cents=settings.intro_credit_cents),
                  stripe=payments.stripe_gateway(settings), x402=payments.x402_gateway(settings))
    return Services(ctx)


def services() -> Services:
    """This process's services; rebuilt in a forked child so no connection crosses a fork."""
    pid = os.getpid()
    if pid not in _built:
        with _lock:
            if pid not in _built:
                _built.clear()
                _built[pid] = build(settings_module.load())
    return _built[pid]
