"""Moving-window limiters: on Redis one Lua script per decision; in memory the `limits` library."""
import hashlib
import math
import time

import redis
from limits.storage import MemoryStorage
from redis import ConnectionPool, RedisError
from redis.exceptions import NoScriptError

from domain.ratelimit import WINDOW_SECONDS, Decision, LimiterUnavailable

# The key names the budget, not the limit: a tier change keeps the uses already in the window.

# One key holds the key's use timestamps, newest first, trimmed to the limit: the layout of `limits`'
# acquire_moving_window.lua, whose decision this is. The same script then counts what the window holds,
# so a decision is one round trip. A cost of 0 only reads. Answers {allowed, used, oldest use (a string:
# Lua numbers come back as integers)}.
DECIDE = """
local key, now, limit, window, cost = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]),
                                      tonumber(ARGV[4])
local floor = now - window
local allowed, len = cost <= limit, nil
if allowed and cost > 0 then
    local entry = redis.call('lindex', key, limit - cost)
    if entry and tonumber(entry) >= floor then
        allowed = false
    else
        local entries = {}
        for i = 1, cost do entries[i] = ARGV[1] end
        for i = 1, cost, 5000 do len = redis.call('lpush', key, unpack(entries, i, math.min(i + 4999, cost))) end
        redis.call('ltrim', key, 0, limit - 1)
        redis.call('expire', key, window)
    end
end
len = math.min(len or redis.call('llen', key), limit)
if len == 0 then return {allowed and 1 or 0, 0, '0'} end
local last = redis.call('lindex', key, len - 1)
if tonumber(last) >= floor then return {allowed and 1 or 0, len, last} end
local low, high, found = 0, len - 2, nil  -- the oldest use still in the window: the last index >= floor
while low <= high do
    local mid = math.floor((low + high) / 2)
    local value = redis.call('lindex', key, mid)
    if tonumber(value) >= floor then found, low = mid, mid + 1 else high = mid - 1 end
end
if found == nil then return {allowed and 1 or 0, 0, '0'} end
return {allowed and 1 or 0, found + 1, redis.call('lindex', key, found)}
"""


def _decision(allowed: bool, per_minute: int, used: int, oldest: float, now: float) -> Decision:
    reset = max(0, math.ceil(oldest + WINDOW_SECONDS - now)) if used else 0
    return Decision(allowed=allowed, limit=per_minute, remaining=max(0, per_minute - used), reset_seconds=reset)


class RedisLimiter:
    """Exact over any 60 s: a use is allowed while fewer than `per_minute` uses fall in the last 60 s.

    Check, push and the window's count are one atomic script (no read-then-write race, one round trip):
    EVALSHA, and the script loaded once when the server does not know it (a restarted Redis), as redis-py's
    Script does, without its per-call imports and type checks (a sixth of a decision's CPU).
    """

    def __init__(self, client: redis.Redis, key_prefix: str) -> None:
        self._client = client
        self._sha = hashlib.sha1(DECIDE.encode()).hexdigest()
        self._prefix = key_prefix

    def hit(self, key: str, per_minute: int, cost: int = 1) -> Decision:
        return self._run(key, per_minute, cost)

    def peek(self, key: str, per_minute: int) -> Decision:
        return self._run(key, per_minute, 0)

    def _run(self, key: str, per_minute: int, cost: int) -> Decision:
        now = time.time()
        args = (f"{self._prefix}:{key}", repr(now), per_minute, WINDOW_SECONDS, cost)
        try:
            try:
                allowed, used, oldest = self._client.evalsha(self._sha, 1, *args)
            except NoScriptError:
                self._sha = self._client.script_load(DECIDE)
                allowed, used, oldest = self._client.evalsha(self._sha, 1, *args)
        except RedisError as exc:
            raise LimiterUnavailable(f"{type(exc).__name__}: {exc}") from exc
        return _decision(bool(allowed), per_minute, used, float(oldest), now)


class MemoryLimiter:
    """The same window in one process's memory, on `limits`' MemoryStorage (a decision then a read)."""

    def __init__(self, storage: MemoryStorage) -> None:
        self._storage = storage

    def hit(self, key: str, per_minute: int, cost: int = 1) -> Decision:
        allowed = self._storage.acquire_entry(key, per_minute, WINDOW_SECONDS, amount=cost)
        return self._state(key, per_minute, allowed)

    def peek(self, key: str, per_minute: int) -> Decision:
        return self._state(key, per_minute, True)

    def _state(self, key: str, per_minute: int, allowed: bool) -> Decision:
        now = time.time()
        oldest, used = self._storage.get_moving_window(key, per_minute, WINDOW_SECONDS)
        return _decision(bool(allowed), per_minute, used, oldest, now)


def redis_limiter(url: str, pool: ConnectionPool, key_prefix: str = "billing-rl") -> RedisLimiter:
    """The limiter on the Redis of `pool` (`url` names it; the pool carries its timeouts)."""
    return RedisLimiter(redis.Redis(connection_pool=pool), key_prefix)


def memory_limiter() -> MemoryLimiter:
    """One process's memory: exact within the process, not shared between processes."""
    return MemoryLimiter(MemoryStorage())
