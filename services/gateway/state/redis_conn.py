"""One Redis client for the gateway's shared state (rate limits, sessions, response cache).

Timeouts are short on purpose: Redis sits on the request path, and every user of this client degrades
rather than waits when Redis is slow or down (rate limits fall back to per-process buckets, sessions and the
cache answer empty). Values are read as `str` (`decode_responses=True`): everything stored is JSON or numbers.
"""

from __future__ import annotations

import redis.asyncio as aioredis


def connect(
    url: str,
    *,
    timeout_s: float = 0.25,
    connect_timeout_s: float = 1.0,
    max_connections: int = 64,
) -> aioredis.Redis:
    """A shared client for `url` (`redis://[:password@]host:port/db`, `rediss://` for TLS, `unix://`).

    Connects lazily; `await client.ping()` checks it. Close it with `await client.aclose()`."""
    return aioredis.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=timeout_s,
        socket_connect_timeout=connect_timeout_s,
        health_check_interval=30,
        max_connections=max_connections,
        client_name="kefu-gateway",
    )
