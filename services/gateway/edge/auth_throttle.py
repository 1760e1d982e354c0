"""Failed-authentication throttle per client address, and which address a request comes from.

Every presented credential that is refused (401: unknown key, bad token) takes one token from the client
address's failure bucket (`ratelimit.py`'s token bucket: `burst` failures at once, refilled at `rate_per_s`).
When the bucket is empty the address is blocked until a token is back: every request from it to a protected
route gets 429 `auth_throttled` with `Retry-After`, valid credential or not, so a guesser cannot tell a hit
from a miss while blocked. Successful authentications cost nothing, and other addresses are untouched: one
address cannot lock a tenant out.

With Redis (the gateway's `redis_url`) buckets and blocks are shared by every replica (the bucket's Lua
script; a block is a key with a TTL). When Redis fails, this process keeps its own buckets and blocks.

IPv4 addresses are counted one by one; IPv6 addresses per /64 (a client usually holds a whole /64).

The client address is the socket peer; `X-Forwarded-For` is read only when the peer is a trusted proxy
(`trusted_proxies`, CIDRs), and then the right-most address that is not itself a trusted proxy wins (the
left part of that header is whatever the client wrote).
"""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

from redis.exceptions import RedisError

from services.gateway.core.errors import TooManyRequests
from services.gateway.edge.ratelimit import MemoryRateLimiter, RedisRateLimiter

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    """`ip_network` of each CIDR (a bare address is a /32 or /128); ValueError naming the bad one."""
    out = []
    for cidr in cidrs:
        try:
            out.append(ipaddress.ip_network(cidr.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{cidr!r} is not an IP address or CIDR network") from None
    return tuple(out)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def _trusted(ip, proxies: tuple[Network, ...]) -> bool:
    return ip is not None and any(ip in net for net in proxies)


def client_address(peer: str | None, forwarded_for: list[str], proxies: tuple[Network, ...]) -> str:
    """The client's address: `peer` unless it is a trusted proxy; then walk `X-Forwarded-For` (all header
    values, in order) from the right, skipping trusted proxies, and take the first other address."""
    address = peer or "unknown"
    if not proxies or not _trusted(_ip(address), proxies):
        return address
    hops = [h.strip() for value in forwarded_for for h in value.split(",") if h.strip()]
    for hop in reversed(hops):
        ip = _ip(hop)
        if ip is None:  # garbage: stop at the last address a trusted hop vouched for
            break
        address = str(ip)
        if not _trusted(ip, proxies):
            break
    return address


def throttle_key(address: str) -> str:
    """The bucket of an address: itself for IPv4 (and non-IP peers), its /64 for IPv6."""
    ip = _ip(address)
    if ip is None:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class FailedAuthThrottle:
    """`blocked_for(address)` before authenticating; `failed(address)` after a refused credential."""

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        *,
        redis=None,
        max_addresses: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
        prefix: str = "kefu:authfail:",
    ):
        self.rate_per_s, self.burst = rate_per_s, burst
        self._clock = clock
        memory = MemoryRateLimiter(max_addresses, clock=clock)
        self._memory_buckets = memory
        self._buckets = (
            RedisRateLimiter(redis, prefix=prefix, fallback=memory) if redis is not None else memory
        )
        self._redis = redis
        self._block_prefix = prefix + "blocked:"
        self._blocks: OrderedDict[str, float] = OrderedDict()  # key -> blocked until (clock)
        self._max = max_addresses
        self._last_warning = -math.inf

    async def blocked_for(self, address: str) -> float:
        """Seconds the address stays blocked (0 = it may try)."""
        key = throttle_key(address)
        if self._redis is not None:
            try:
                ttl_ms = await self._redis.pttl(self._block_prefix + key)
                return max(0.0, ttl_ms / 1000) if ttl_ms and ttl_ms > 0 else 0.0
            except (RedisError, OSError) as e:
                self._warn(e)
        until = self._blocks.get(key, 0.0)
        left = until - self._clock()
        if left <= 0:
            self._blocks.pop(key, None)
            return 0.0
        return left

    async def failed(self, address: str) -> float:
        """Counts one refused credential; seconds the address is now blocked (0 = not blocked)."""
        key = throttle_key(address)
        decision = await self._buckets.acquire(key, self.rate_per_s, self.burst)
        if decision.allowed:
            return 0.0
        wait = max(1.0, decision.retry_after_s)
        log.warning(
            "authentication: %d failed attempts from one client address; refusing it for %.0f s",
            self.burst,
            wait,
        )
        if self._redis is not None:
            try:
                await self._redis.set(self._block_prefix + key, "1", px=math.ceil(wait * 1000))
                return wait
            except (RedisError, OSError) as e:
                self._warn(e)
        self._blocks.pop(key, None)
        self._blocks[key] = self._clock() + wait
        while len(self._blocks) > self._max:
            self._blocks.popitem(last=False)
        return wait

    def _warn(self, e: Exception) -> None:
        now = time.monotonic()
        if now - self._last_warning > 60:
            self._last_warning = now
            log.warning("failed-auth throttle: Redis failed (%s); counting per process until it is back", e)

    async def close(self) -> None:
        await self._buckets.close()
        self._blocks.clear()


def throttled(seconds: float) -> TooManyRequests:
    """429 `auth_throttled` with `Retry-After` (whole seconds, at least 1)."""
    retry = str(max(1, math.ceil(seconds)))
    return TooManyRequests(
        "auth_throttled",
        f"too many refused credentials from this address; retry after {retry} s",
        retry_after_s=retry,
    )
