"""What every service is built with."""
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, TypeVar

from domain.public_ids import PublicIds
from domain.store import keys
from domain.store.uow import Connection, UnitOfWork
from domain.tiers import DEFAULT_TABLE, TierTable

T = TypeVar("T")
Enqueue = Callable[..., bool]  # enqueue(task_name, **kwargs) -> sent?; never raises: the outbox covers a miss


def untraced() -> str | None:
    return None


def not_resumed(name: str, trace_parent: str | None, links: Sequence[str] = ()) -> AbstractContextManager:
    return nullcontext()


@dataclass(frozen=True)
class Config:
    intro_credit_cents: int = 1000
    intro_credit_ttl_days: int | None = None  # the intro credit's grant expires this long after it is made
    tiers: TierTable = DEFAULT_TABLE
    tier_max_age_seconds: int = 900  # the beat job recomputes tiers older than this
    idempotency_ttl_seconds: int = 86400  # an Idempotency-Key's replay window
    idempotency_lease_seconds: int = 60  # a claim whose process died is free again after this
    webhooks_allow_private: bool = False  # BILLING_WEBHOOKS_ALLOW_PRIVATE: http and non-public receivers too
    webhook_retry_scale: float = 1.0  # the retry schedule and the disabling window, scaled (tests: shorter)
    webhook_timeout_seconds: float = 10.0  # a receiver's 2xx later than this is a failure


@dataclass(frozen=True)
class Context:
    uow: Callable[[], UnitOfWork]
    enqueue: Enqueue
    config: Config
    stripe: Any = None  # domain.providers.stripe_gateway.StripeGateway, when configured
    x402: Any = None  # domain.providers.x402_gateway.X402Gateway, when configured
    webhooks: Any = None  # domain.providers.webhook_sender.WebhookSender; None: one from `config`
    limiter: Any = None  # a domain.ratelimit.Limiter; None: this process's memory, failing open
    # Wakes the worker to apply queued credits; sends may be merged (worker.wakeups). None: enqueue.
    wake: Enqueue | None = None
    ids: PublicIds | None = None  # None: the permutation keyed by the database's service key
    # The W3C traceparent of the request being served, stored on the operations it records (worker.tracing).
    trace_parent: Callable[[], str | None] = untraced
    # resume_trace(name, trace_parent, links): a block, the relay's send, run in the trace a stored one names.
    resume_trace: Callable[..., AbstractContextManager] = not_resumed
    # A unit of work for a read that is one statement (or statements that need no common snapshot): in
    # autocommit, without BEGIN and ROLLBACK round trips. None: `uow`.
    read: Callable[[], UnitOfWork] | None = None
    # lagging(read) runs read(conn) for an answer that may lag the primary by up to BILLING_READ_MAX_LAG_MS
    # (lists, summaries, usage): on a read replica when one is current enough (domain.store.replicas), else
    # as `read`. Never for what a caller reads right after its own write (balance, operations, checkouts).
    lagging: Callable[[Callable[[Connection], T]], T] | None = None
    # A bare psycopg connection for domain.store.prepared's statements (domain.store.uow.RawRead on the read
    # engine). None: the driver connection of a `read` unit of work.
    raw_read: Callable[[], AbstractContextManager[Any]] | None = None
    # A bare psycopg connection whose statements commit one by one (autocommit, on the primary, under the same
    # lock_timeout as `uow`): for a write that is one statement, one round trip where a transaction costs three.
    # None: the driver connection of a `uow`, committed when the block ends without an error.
    single: Callable[[], AbstractContextManager[Any]] | None = None

    def __post_init__(self) -> None:
        if self.ids is None:
            object.__setattr__(self, "ids", PublicIds(lambda: _public_ids_key(self.uow)))
        if self.read is None:
            object.__setattr__(self, "read", self.uow)
        object.__setattr__(self, "routes_reads", self.lagging is not None)  # replicas serve `lagging`
        if self.lagging is None:
            object.__setattr__(self, "lagging", run_in(self.read))
        if self.raw_read is None:
            object.__setattr__(self, "raw_read", lambda: _driver_of(self.read))
        if self.single is None:
            object.__setattr__(self, "single", lambda: _driver_of(self.uow, commit=True))


def run_in(unit: Callable[[], UnitOfWork]) -> Callable[[Callable[[Connection], T]], T]:
    """lagging without replicas: the read in a unit of work of `unit`."""
    def run(read: Callable[[Connection], T]) -> T:
        with unit() as uow:
            return read(uow.conn)
    return run


@contextmanager
def _driver_of(unit_of_work: Callable[[], UnitOfWork], *, commit: bool = False):
    with unit_of_work() as unit:
        yield unit.driver
        if commit:
            unit.commit()


def _public_ids_key(uow: Callable[[], UnitOfWork]) -> bytes:
    with uow() as unit:
        return keys.service_key(unit.conn, "public_ids")
