"""Per-key token buckets: in memory (one process), or in Redis so every gateway replica shares one bucket.

A bucket holds at most `burst` tokens and refills at `rate_per_s`; each request takes one. A refused request
learns how long until a token is back (`retry_after_s`, for the `Retry-After` header).

The Redis bucket is one hash per key (`tokens`, `ts`) updated by a Lua script, so the read-refill-take-write
is atomic across replicas; the script reads Redis' own clock (`TIME`), so replicas with skewed clocks still
agree. The hash expires once a full bucket would have refilled (an idle key costs nothing). When Redis fails
the limiter falls back to a per-process bucket for that call and logs (at most once a minute): a Redis outage
loosens the limit to per replica, it does not refuse every caller.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from redis.exceptions import RedisError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after_s: float  # 0 when allowed; else seconds until one token is back

    @property
    def retry_after_header(self) -> str:
        """`Retry-After` as HTTP wants it: whole seconds, at least 1."""
        return str(max(1, math.ceil(self.retry_after_s)))


class RateLimiter(Protocol):
    async def acquire(self, key: str, rate_per_s: float, burst: int) -> Decision: ...

    async def close(self) -> None: ...


class MemoryRateLimiter:
    """Token buckets in this process, LRU-bounded to `max_keys` (JWT subjects are not a closed set)."""

    def __init__(self, max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic):
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)
        self._max_keys = max_keys
        self._clock = clock

    async def acquire(self, key: str, rate_per_s: float, burst: int) -> Decision:
        return self.acquire_now(key, rate_per_s, burst)

    def acquire_now(self, key: str, rate_per_s: float, burst: int) -> Decision:
        now = self._clock()
        tokens, at = self._buckets.pop(key, (float(burst), now))
        tokens = min(float(burst), tokens + max(0.0, now - at) * rate_per_s)
        if tokens >= 1.0:
            decision = Decision(True, 0.0)
            tokens -= 1.0
        else:
            decision = Decision(False, (1.0 - tokens) / rate_per_s)
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return decision

    async def close(self) -> None:
        self._buckets.clear()


# KEYS[1] bucket; ARGV rate_per_s, burst. Returns {allowed 0/1, retry_after_s as a string}.
TOKEN_BUCKET_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local v = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(v[1])
local ts = tonumber(v[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens), 'ts', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, string.format('%.6f', wait)}
"""


class RedisRateLimiter:
    """Token buckets shared by every replica through Redis (atomic Lua script)."""

    def __init__(self, redis, prefix: str = "kefu:ratelimit:", fallback: MemoryRateLimiter | None = None):
        self._redis = redis
        self._prefix = prefix
        self._script = redis.register_script(TOKEN_BUCKET_LUA)
        self._fallback = fallback or MemoryRateLimiter()
        self._last_warning = -math.inf

    async def acquire(self, key: str, rate_per_s: float, burst: int) -> Decision:
        try:
            allowed, wait = await self._script(keys=[self._prefix + key], args=[rate_per_s, burst])
        except (RedisError, OSError) as e:
            now = time.monotonic()
            if now - self._last_warning > 60:
                self._last_warning = now
                log.warning("rate limit: Redis failed (%s); limiting per process until it is back", e)
            return self._fallback.acquire_now(key, rate_per_s, burst)
        return Decision(bool(int(allowed)), float(wait))

    async def close(self) -> None:
        await self._fallback.close()
