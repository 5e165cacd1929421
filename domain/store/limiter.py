"""The limiter on the `limits` library's moving window: Redis (one atomic Lua script per decision) or memory."""
import math
import time

from limits.errors import StorageError
from limits.storage import MemoryStorage, RedisStorage
from redis import ConnectionPool, RedisError

from domain.ratelimit import WINDOW_SECONDS, Decision, LimiterUnavailable

# The key names the budget, not the limit: a tier change keeps the uses already in the window.


class MovingWindowLimiter:
    """Exact over any 60 s: a use is allowed while fewer than `per_minute` uses fall in the last 60 s.

    A hit is limits' acquire_moving_window.lua (check and push in one script, so no read-then-write
    race); remaining and reset come from a second, read-only script.
    """

    def __init__(self, storage: RedisStorage | MemoryStorage) -> None:
        self._storage = storage

    def hit(self, key: str, per_minute: int, cost: int = 1) -> Decision:
        try:
            allowed = self._storage.acquire_entry(key, per_minute, WINDOW_SECONDS, amount=cost)
        except (RedisError, StorageError) as exc:
            raise LimiterUnavailable(f"{type(exc).__name__}: {exc}") from exc
        return self._state(key, per_minute, allowed)

    def peek(self, key: str, per_minute: int) -> Decision:
        return self._state(key, per_minute, True)

    def _state(self, key: str, per_minute: int, allowed: bool) -> Decision:
        try:
            oldest, used = self._storage.get_moving_window(key, per_minute, WINDOW_SECONDS)
        except (RedisError, StorageError) as exc:
            raise LimiterUnavailable(f"{type(exc).__name__}: {exc}") from exc
        reset = max(0, math.ceil(oldest + WINDOW_SECONDS - time.time())) if used else 0
        return Decision(allowed=bool(allowed), limit=per_minute, remaining=max(0, per_minute - used),
                        reset_seconds=reset)


def redis_limiter(url: str, pool: ConnectionPool, key_prefix: str = "billing-rl") -> MovingWindowLimiter:
    return MovingWindowLimiter(RedisStorage(url, connection_pool=pool, key_prefix=key_prefix))


def memory_limiter() -> MovingWindowLimiter:
    """One process's memory: exact within the process, not shared between processes."""
    return MovingWindowLimiter(MemoryStorage())
