"""Read replicas: a read that may lag runs on a replica whose measured replay lag is within the limit."""
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from domain.errors import Forbidden, NotFound, Unavailable
from domain.store.uow import Connection, UnitOfWork

log = logging.getLogger(__name__)
T = TypeVar("T")
PRIMARY = "primary"

# The replica's lag in milliseconds. One that has replayed all the WAL it received while it still streams
# from the primary is current, however old its last replayed transaction: an idle primary sends nothing
# to replay. Otherwise the lag is the age of the last transaction it replayed (never one: infinite). A
# server not in recovery (a promoted replica) is current.
_LAG_MS = text("""
SELECT CASE
    WHEN NOT pg_is_in_recovery() THEN 0
    WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() AND EXISTS (SELECT 1 FROM pg_stat_wal_receiver)
        THEN 0
    ELSE COALESCE(1000 * EXTRACT(EPOCH FROM clock_timestamp() - pg_last_xact_replay_timestamp()), 'Infinity')
END
""")


def measure_lag_ms(conn: Connection) -> float:
    return float(conn.execute(_LAG_MS).scalar())


class Replica:
    """One replica and its last lag measurement; measured again when older than `remeasure_s`."""

    def __init__(self, name: str, engine: Engine) -> None:
        self.name = name
        self.engine = engine
        self.lag_ms = math.inf
        self.measured_at = -math.inf
        self._measuring = threading.Lock()

    def lag_bound_ms(self, now: float, remeasure_s: float, retry_down_s: float,
                     on_lag: Callable[[str, float], None] | None) -> float:
        """The lag now, at most: the last measurement plus the time since it was taken (lag grows at most as
        fast as the clock; WAL the replica has not received yet is not counted, see docs/scaling.md). A thread
        finding it stale measures; others meanwhile use the old one."""
        due = retry_down_s if math.isinf(self.lag_ms) else remeasure_s
        if now - self.measured_at >= due and self._measuring.acquire(blocking=False):
            try:
                self.lag_ms = self._measure()
                self.measured_at = now
            finally:
                self._measuring.release()
            if on_lag is not None:
                on_lag(self.name, self.lag_ms)
        return self.lag_ms + 1000 * max(0.0, now - self.measured_at)

    def mark_down(self, now: float) -> None:
        self.lag_ms, self.measured_at = math.inf, now

    def _measure(self) -> float:
        try:
            with self.engine.connect() as conn:
                return measure_lag_ms(conn)
        except DBAPIError as exc:
            log.warning("read replica %s not measured, skipped: %s", self.name, type(exc.orig).__name__)
            return math.inf


class ReadRouter:
    """Runs a lag-tolerant read on a replica within `max_lag_ms` (taking them in turn), else on the primary.

    A replica that fails mid-read is skipped until `retry_down_s` passed, and the read runs again on the
    primary. A NotFound or Forbidden from a replica is asked again of the primary: the workspace, account or
    membership may have been created since the replica's snapshot (a caller reading right after its write)."""

    def __init__(self, primary: Callable[[], UnitOfWork], replicas: list[Replica], max_lag_ms: int, *,
                 remeasure_s: float = 0.1, retry_down_s: float = 1.0,
                 on_served: Callable[[str], None] | None = None,
                 on_lag: Callable[[str, float], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._primary = primary
        self.replicas = replicas
        self._max_lag_ms = max_lag_ms
        self._remeasure_s, self._retry_down_s = remeasure_s, retry_down_s
        self._on_served, self._on_lag = on_served, on_lag
        self._clock = clock
        self._turn = itertools.count()

    def run(self, read: Callable[[Connection], T]) -> T:
        replica = self.choose()
        if replica is not None:
            try:
                with UnitOfWork(replica.engine) as uow:
                    return self._served(replica.name, read(uow.conn))
            except Unavailable:
                replica.mark_down(self._clock())
                log.warning("read replica %s failed a read; the primary serves it", replica.name)
            except (NotFound, Forbidden):
                pass
        with self._primary() as uow:
            return self._served(PRIMARY, read(uow.conn))

    def choose(self) -> Replica | None:
        """The next replica in turn whose lag is within the limit; None: the primary serves."""
        if not self.replicas:
            return None
        start, now = next(self._turn) % len(self.replicas), self._clock()
        for replica in self.replicas[start:] + self.replicas[:start]:
            if replica.lag_bound_ms(now, self._remeasure_s, self._retry_down_s, self._on_lag) <= self._max_lag_ms:
                return replica
        return None

    def _served(self, name: str, result: T) -> T:
        if self._on_served is not None:
            self._on_served(name)
        return result

    def dispose(self) -> None:
        for replica in self.replicas:
            replica.engine.dispose()
