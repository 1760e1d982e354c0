"""Response cache: answers keyed by route, normalised text and the versions of every model that shaped them.

`cache_key` hashes all of it, so a new model version (or FAQ encoder, thresholds, knowledge-base revision:
whatever the caller puts in `versions`) changes every key and a stale answer can never be served; old
entries simply age out. `extra` carries anything else the answer depends on (options).

Entries are per tenant (`tenant` is a required part of every key). The values themselves are tenant-neutral
(a model's prediction for a text), but a shared entry would tell one tenant what another's customers sent: a
hit skips the model call, which shows in `Server-Timing` (no `intent;dur`) and in latency, so tenant B could
test whether anyone sent an exact text (an order or phone number in it) in the last `ttl_s`. Per tenant, a
hit only ever reveals the tenant's own traffic; common questions still hit within each tenant.

`MemoryCache` (LRU, bounded, TTL: cachetools' `TTLCache`) for one process; `RedisCache` (JSON values with a TTL) shared by replicas.
Values are JSON-serialisable dicts, stored as JSON in both, so a caller mutating what it got back never
changes the cache. A Redis failure is a miss (get) or a skipped write (set), logged at most once a minute.
The caller counts hits and misses (`metrics.cache`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from cachetools import TTLCache
from redis.exceptions import RedisError

log = logging.getLogger(__name__)


def cache_key(route: str, text: str, versions: Mapping[str, str], extra: str = "", *, tenant: str) -> str:
    """sha256 (hex) of the tenant, the route, the normalised text, every (model, version) pair and `extra`."""
    if not tenant:
        raise ValueError("cache_key: the tenant is required (entries are never shared between tenants)")
    parts = [tenant, route, text, sorted((str(k), str(v)) for k, v in versions.items()), extra]
    raw = json.dumps(parts, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()


class ResponseCache(Protocol):
    async def get(self, key: str) -> dict | None: ...

    async def set(self, key: str, value: dict) -> None: ...

    async def close(self) -> None: ...


class MemoryCache:
    """At most `max_entries` answers (least recently used evicted), each kept `ttl_s` seconds."""

    def __init__(
        self, max_entries: int = 10_000, ttl_s: float = 300.0, clock: Callable[[], float] = time.monotonic
    ):
        if max_entries < 1 or ttl_s <= 0:
            raise ValueError("cache: max_entries must be at least 1 and ttl_s positive")
        self.max_entries, self.ttl_s = max_entries, ttl_s
        self._data: TTLCache[str, str] = TTLCache(max_entries, ttl_s, timer=clock)

    async def get(self, key: str) -> dict | None:
        raw = self._data.get(key)
        return None if raw is None else json.loads(raw)

    async def set(self, key: str, value: dict) -> None:
        self._data[key] = json.dumps(value, ensure_ascii=False)

    def __len__(self) -> int:
        self._data.expire()
        return len(self._data)

    async def close(self) -> None:
        self._data.clear()


class RedisCache:
    """Answers in Redis under `<prefix><key>`, each expiring `ttl_s` after it was written."""

    def __init__(self, redis, ttl_s: float = 300.0, prefix: str = "kefu:cache:"):
        if ttl_s <= 0:
            raise ValueError("cache: ttl_s must be positive")
        self._redis, self.ttl_s, self._prefix = redis, ttl_s, prefix
        self._last_warning = -math.inf

    async def get(self, key: str) -> dict | None:
        try:
            raw = await self._redis.get(self._prefix + key)
        except (RedisError, OSError) as e:
            self._warn("get", e)
            return None
        if raw is None:
            return None
        try:
            value = json.loads(raw)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    async def set(self, key: str, value: dict) -> None:
        raw = json.dumps(value, ensure_ascii=False)
        try:
            await self._redis.set(self._prefix + key, raw, px=max(1, int(self.ttl_s * 1000)))
        except (RedisError, OSError) as e:
            self._warn("set", e)

    def _warn(self, op: str, e: Exception) -> None:
        now = time.monotonic()
        if now - self._last_warning > 60:
            self._last_warning = now
            log.warning("response cache: Redis %s failed (%s); answering uncached", op, e)

    async def close(self) -> None:
        return None
