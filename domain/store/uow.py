"""The unit of work: one transaction, committed explicitly, discarded otherwise."""
import time
from collections.abc import Callable
from typing import Self

import psycopg
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError

from domain.errors import Unavailable
from domain.store import webhook_events

# What a unit of work lets out when the database refused a statement (a constraint, bad data, a bug); one
# that could not reach the database leaves as Unavailable instead. Services catch it by this name.
StoreError = DBAPIError

POSTINGS = "billing.postings"  # Connection.info key: (kind, amount_cents) of entries written in this transaction
FAILED = "billing.failed_operations"  # Connection.info key: kinds of the operations this transaction failed


def note_postings(conn: Connection, postings: list[tuple[str, int]]) -> None:
    """Remember entries written in this transaction, for whoever observes commits (metrics)."""
    conn.info.setdefault(POSTINGS, []).extend(postings)


def note_failed(conn: Connection, kind: str) -> None:
    """Remember an operation this transaction marked failed, for whoever observes commits (metrics)."""
    conn.info.setdefault(FAILED, []).append(kind)


IDLE_PING_SECONDS = 5.0  # a pooled connection unused for longer is pinged before it is handed out
# A peer that went silent (its host cut off: no FIN, no RST) ends the connection after about 25 s on both
# sides, instead of TCP's defaults (two hours of keepalive, 15 minutes of retransmissions). Here: a unit of
# work waiting on a server that vanished fails as unavailable and is retried. On the server (the -c options
# below): a session whose client vanished gives its connection slot back.
CLIENT_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
                     "tcp_user_timeout": 25_000}
SERVER_KEEPALIVES = {"tcp_keepalives_idle": 10, "tcp_keepalives_interval": 5, "tcp_keepalives_count": 3}


def make_engine(url: str, pool_size: int = 5, *, lock_timeout_ms: int | None = None,
                statement_timeout_ms: int | None = None, idle_in_transaction_timeout_ms: int | None = None,
                autocommit: bool = False, connect_timeout_s: int | None = None) -> Engine:
    """An engine for psycopg 3; plain postgresql:// URLs are accepted.

    lock_timeout bounds every wait for a row lock (another transaction holding an account): the unit of
    work fails as unavailable instead, and the worker retries the operation later rather than spend a
    slot waiting; statement_timeout bounds any one statement below the tasks' time limit.

    idle_in_transaction_session_timeout is the server's own clock on a client that went silent inside a
    transaction (its host cut off: no FIN, no RST). Without it the session keeps its row locks (the
    operation, the account) until the server's TCP keepalive gives up, two hours by default: the other
    workers skip those operations (SKIP LOCKED) and wait on that account all that time. With it, the
    transaction is rolled back after the timeout and another worker (or the outbox relay) takes over.
    Keepalives on both ends (CLIENT_KEEPALIVES, SERVER_KEEPALIVES) end a connection to a silent peer.

    No pool_pre_ping (a round trip per unit of work): a connection is pinged only when it sat idle in the
    pool for IDLE_PING_SECONDS, which is when a restarted server or a dropped link shows. One that dies
    while in steady use fails its unit of work as unavailable (503 in the API, a retry in the worker).

    With autocommit (the engine of single-statement reads, and of writes that are one statement) a unit of
    work sends its statement alone: no BEGIN before it, no ROLLBACK after, one round trip where a transaction
    costs three.

    connect_timeout_s bounds a connection attempt (a read replica's: a host gone quiet costs a read that
    long once, then it is skipped)."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    settings = SERVER_KEEPALIVES | {"lock_timeout": lock_timeout_ms, "statement_timeout": statement_timeout_ms,
                                    "idle_in_transaction_session_timeout": idle_in_transaction_timeout_ms}
    options = " ".join(f"-c {name}={value}" for name, value in settings.items() if value)
    connect_args = {"options": options, **CLIENT_KEEPALIVES}
    if connect_timeout_s:
        connect_args["connect_timeout"] = connect_timeout_s
    # In autocommit no transaction is left open to roll back at check-in: the pool's reset is skipped.
    engine = create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_recycle=1800,
                           connect_args=connect_args,
                           **({"isolation_level": "AUTOCOMMIT", "pool_reset_on_return": None} if autocommit else {}))
    _ping_when_idle(engine)
    return engine


def _ping_when_idle(engine: Engine) -> None:
    @event.listens_for(engine, "checkin")
    def _idle_from(dbapi_connection, record) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_connection, record, proxy) -> None:
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < IDLE_PING_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:  # the pool discards this connection and hands out a new one
            raise DisconnectionError(f"a pooled connection failed its ping: {exc}") from exc


def is_unavailable(exc: BaseException) -> bool:
    """True for errors that mean the database could not be reached, not that the SQL was wrong (psycopg's own
    too, from a store function that uses the driver directly)."""
    return isinstance(exc, (OperationalError, InterfaceError, psycopg.OperationalError, psycopg.InterfaceError)) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated)


def _chain(exc: BaseException) -> list[BaseException]:
    chain = [exc]
    while chain[-1].__cause__ is not None:
        chain.append(chain[-1].__cause__)
    return chain


def _unavailable(exc: BaseException) -> Unavailable:
    """What a caller is told when a unit of work could not finish: a row another transaction held past
    lock_timeout, or a statement stopped at statement_timeout, is named as that (the database is up; a retry
    shortly may do), anything else as the database unavailable."""
    causes = [getattr(seen, "orig", seen) for seen in _chain(exc)]
    if any(isinstance(cause, psycopg.errors.LockNotAvailable) for cause in causes):
        return Unavailable("the billing account is locked by another transaction; retry shortly")
    if any(isinstance(cause, psycopg.errors.QueryCanceled) for cause in causes):
        return Unavailable("a statement ran past its time limit; retry shortly")
    return Unavailable("the database is unavailable")


def transient_cause(exc: BaseException) -> str:
    """What stopped a unit of work, in words fit to show a caller: never the exception's own text, which
    may hold addresses or SQL."""
    chain = _chain(exc)
    for orig in (getattr(seen, "orig", None) for seen in chain):
        if isinstance(orig, psycopg.errors.LockNotAvailable):
            return "the billing account is locked by another transaction; waiting for it"
        if isinstance(orig, psycopg.errors.QueryCanceled):
            return "a statement ran past its time limit"
        if isinstance(orig, psycopg.errors.TransactionRollback):
            return "the transaction clashed with another one (deadlock or serialization)"
    if any(isinstance(seen, (OperationalError, InterfaceError, Unavailable)) for seen in chain):
        return "the database is unavailable"
    return f"an unexpected error ({type(exc).__name__}); logged for the operators"


def driver_of(conn: Connection) -> psycopg.Connection:
    """The psycopg connection under a SQLAlchemy one (in its transaction, if any)."""
    return conn.connection.driver_connection


class UnitOfWork:
    """`with uow_factory() as uow: ...; uow.commit()`. Leaving without commit rolls back.

    The one place where "the database is unavailable" is decided: an error meaning so, on entering or from
    inside, leaves as domain.errors.Unavailable, so the API and the tasks never see a driver's error for it."""

    def __init__(self, engine: Engine, on_postings: Callable[[list[tuple[str, int]]], None] | None = None,
                 on_failed: Callable[[list[str]], None] | None = None,
                 on_deliveries: Callable[[], None] | None = None) -> None:
        self._engine = engine
        self._on_postings = on_postings
        self._on_failed = on_failed
        self._on_deliveries = on_deliveries  # webhook deliveries were committed: wake their dispatcher
        self._after_commit: list[Callable[[], None]] = []
        self.conn: Connection

    def __enter__(self) -> Self:
        try:
            self.conn = self._engine.connect()
            self._tx = self.conn.begin()
        except DBAPIError as exc:
            if is_unavailable(exc):
                raise Unavailable("the database is unavailable") from exc
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # The connection goes back to the pool. One the server dropped is invalidated, its info gone with
        # it; touching conn.info then raises PendingRollbackError, which would hide the OperationalError.
        if not self.conn.invalidated:
            self.conn.info.pop(POSTINGS, None)
            self.conn.info.pop(FAILED, None)
            webhook_events.discard(self.conn)
        try:
            if self._tx.is_active:
                self._tx.rollback()
        except DBAPIError:
            pass
        finally:
            self.conn.close()
        if exc is not None and is_unavailable(exc):
            raise _unavailable(exc) from exc

    @property
    def driver(self) -> psycopg.Connection:
        """The psycopg connection under `conn`, in this transaction: for domain.store.prepared's statements."""
        return driver_of(self.conn)

    def after_commit(self, callback: Callable[[], None]) -> None:
        self._after_commit.append(callback)

    def commit(self) -> None:
        """Write the webhook events emitted in this transaction, commit, then tell the observers."""
        deliveries = webhook_events.flush(self.conn)
        postings, failed = self.conn.info.pop(POSTINGS, []), self.conn.info.pop(FAILED, [])
        self._tx.commit()
        if self._on_deliveries is not None and deliveries:
            self._on_deliveries()
        if self._on_postings is not None and postings:
            self._on_postings(postings)
        if self._on_failed is not None and failed:
            self._on_failed(failed)
        callbacks, self._after_commit = self._after_commit, []
        for callback in callbacks:
            callback()


class RawRead:
    """`with RawRead(engine) as conn:` a pooled psycopg connection for statements run on the driver
    (domain.store.prepared's reads, a hold's one-statement writes).

    On the autocommit engine a statement goes alone: no BEGIN, no ROLLBACK, no SQLAlchemy execution.
    On another engine the driver opens a transaction and the pool rolls it back at check-in. A connection
    that lost the server is dropped from the pool, and the error leaves as Unavailable."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def __enter__(self) -> psycopg.Connection:
        try:  # a new connection that fails raises the driver's own error here, not SQLAlchemy's
            self._pooled = self._engine.raw_connection()
        except Exception as exc:
            if is_unavailable(exc):
                raise Unavailable("the database is unavailable") from exc
            raise
        return self._pooled.driver_connection

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None and is_unavailable(exc):
            self._pooled.invalidate()
            raise _unavailable(exc) from exc
        self._pooled.close()
