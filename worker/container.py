"""The composition root: one Services per process, built lazily (after any fork)."""
import logging
import os
import threading

import redis

from domain.names import Task
from domain.ratelimit import FailurePolicy
from domain.services.context import Config, Context
from domain.services.registry import Services
from domain.store.limiter import memory_limiter, redis_limiter
from domain.store.replicas import ReadRouter, Replica
from domain.store.uow import RawRead, UnitOfWork, make_engine
from worker import metrics, payments, settings as settings_module, tracing
from worker.wakeups import MergedSends, WaitingFlag

log = logging.getLogger(__name__)
_lock = threading.Lock()
_built: dict[int, Services] = {}
_waiting: dict[int, WaitingFlag | None] = {}
FLAGGED = frozenset({Task.APPLY_OPERATION, Task.APPLY_STRIPE_EVENT})  # their tasks call wake_up_started first


def build(settings: settings_module.Settings, enqueue=None, pool_size: int = 5) -> Services:
    engine = make_engine(settings_module.require(settings.database_url, "DATABASE_URL"), pool_size,
                         lock_timeout_ms=settings.db_lock_timeout_ms,
                         statement_timeout_ms=settings.db_statement_timeout_ms,
                         idle_in_transaction_timeout_ms=settings.db_idle_in_transaction_timeout_ms)
    if enqueue is None:
        from worker.queue import enqueue  # the Celery app is only loaded where it is used
    # Autocommit: single-statement reads, and writes that are one statement (ctx.single)
    reads = make_engine(settings.database_url, pool_size, lock_timeout_ms=settings.db_lock_timeout_ms,
                        statement_timeout_ms=settings.db_statement_timeout_ms, autocommit=True)
    waiting = waiting_flag(settings)
    _waiting[os.getpid()] = waiting
    wake = MergedSends(enqueue, settings.wake_interval_ms / 1000, waiting, FLAGGED)
    ctx = Context(uow=lambda: UnitOfWork(engine, on_postings=metrics.observe_postings, on_failed=metrics.observe_failed,
                                         on_deliveries=lambda: wake(Task.DISPATCH_WEBHOOKS)), enqueue=enqueue,
                  read=lambda: UnitOfWork(reads), raw_read=lambda: RawRead(reads),
                  single=lambda: RawRead(reads),
                  lagging=lagging(settings, lambda: UnitOfWork(reads), pool_size),
                  config=Config(intro_credit_cents=settings.intro_credit_cents,
                                intro_credit_ttl_days=settings.intro_credit_ttl_days, tiers=settings.tiers,
                                tier_max_age_seconds=settings.tier_max_age_seconds,
                                idempotency_ttl_seconds=settings.idempotency_ttl_seconds,
                                idempotency_lease_seconds=settings.idempotency_lease_seconds,
                                webhooks_allow_private=settings.webhooks_allow_private,
                                webhook_retry_scale=settings.webhook_retry_scale,
                                webhook_timeout_seconds=settings.webhook_timeout_seconds),
                  stripe=payments.stripe_gateway(settings), x402=payments.x402_gateway(settings),
                  limiter=limiter(settings), wake=wake,
                  trace_parent=tracing.trace_parent, resume_trace=tracing.resume)
    return Services(ctx)


def lagging(settings: settings_module.Settings, primary, pool_size: int):
    """Reads that may lag go to the replicas of DATABASE_READ_URL; None (the primary's `read`) without any."""
    if not settings.database_read_urls:
        return None
    replicas = [Replica(f"replica{i}", make_engine(url, pool_size, autocommit=True, connect_timeout_s=2,
                                                   statement_timeout_ms=settings.db_statement_timeout_ms))
                for i, url in enumerate(settings.database_read_urls, start=1)]
    return ReadRouter(primary, replicas, settings.read_max_lag_ms, on_served=metrics.observe_read,
                      on_lag=metrics.observe_replica_lag).run


def waiting_flag(settings: settings_module.Settings) -> WaitingFlag | None:
    """Skips a wake-up while another waits in the queue (worker.wakeups); needs REDIS_URL."""
    if not settings.redis_url:
        return None
    return WaitingFlag(redis.Redis.from_url(settings.redis_url, socket_connect_timeout=0.25, socket_timeout=0.5))


def wake_up_started(task_name: str) -> None:
    """A task that wake-ups start has started: lower its flag before it claims anything."""
    services()
    if flag := _waiting.get(os.getpid()):
        flag.lower(task_name)


def limiter(settings: settings_module.Settings) -> FailurePolicy:
    """The rate limiter on REDIS_URL (short timeouts: a decision never waits long on Redis); without
    REDIS_URL (standalone), `limits`' memory storage, which is per process."""
    if not settings.redis_url:
        return FailurePolicy(memory_limiter(), fail_open=settings.rate_limit_fail_open,
                             on_decision=metrics.observe_decision)
    pool = redis.ConnectionPool.from_url(settings.redis_url, socket_connect_timeout=0.25, socket_timeout=0.5)
    return FailurePolicy(redis_limiter(settings.redis_url, pool), fail_open=settings.rate_limit_fail_open,
                         on_decision=metrics.observe_decision)


def services() -> Services:
    """This process's services; rebuilt in a forked child so no connection crosses a fork."""
    pid = os.getpid()
    if pid not in _built:
        with _lock:
            if pid not in _built:
                _built.clear()
                _built[pid] = build(settings_module.load())
    return _built[pid]
