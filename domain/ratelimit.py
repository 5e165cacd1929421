"""The rate-limit port: a per-key budget per minute, and what a decision is when its store is down."""
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)

WINDOW_SECONDS = 60
BACKOFF_SECONDS = 1.0  # after a store failure, decide without it for this long (a hung Redis costs one timeout)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int  # until the oldest use in the window expires (0 when the window is empty)
    degraded: bool = False  # decided by the failure policy, not by the store


class LimiterUnavailable(Exception):
    """The limiter's store did not answer."""


class Limiter(Protocol):
    def hit(self, key: str, per_minute: int, cost: int = 1) -> Decision:
        """Consume `cost` from the key's budget if it all fits; atomic in the store."""

    def peek(self, key: str, per_minute: int) -> Decision:
        """The key's state without consuming anything."""


class FailurePolicy:
    """Wraps a Limiter: when the store is unreachable, allow everything (open) or nothing (closed)."""

    def __init__(self, inner: Limiter, *, fail_open: bool = True,
                 on_decision: Callable[[Decision], None] | None = None) -> None:
        self.inner, self.fail_open = inner, fail_open
        self._on_decision = on_decision
        self.unavailable_total = 0  # decisions taken without the store; a metric to export
        self._down_until = 0.0
        self._lock = threading.Lock()

    def hit(self, key: str, per_minute: int, cost: int = 1) -> Decision:
        decision = self._guarded(lambda: self.inner.hit(key, per_minute, cost), per_minute)
        if self._on_decision is not None:
            self._on_decision(decision)
        return decision

    def peek(self, key: str, per_minute: int) -> Decision:
        return self._guarded(lambda: self.inner.peek(key, per_minute), per_minute)

    def _guarded(self, decide, per_minute: int) -> Decision:
        if time.monotonic() >= self._down_until:
            try:
                return decide()
            except LimiterUnavailable as exc:
                self._down_until = time.monotonic() + BACKOFF_SECONDS
                log.warning("rate limiter unavailable (%s); failing %s", exc,
                            "open" if self.fail_open else "closed")
        with self._lock:
            self.unavailable_total += 1
        return Decision(allowed=self.fail_open, limit=per_minute, remaining=per_minute if self.fail_open else 0,
                        reset_seconds=0 if self.fail_open else int(BACKOFF_SECONDS) or 1, degraded=True)
