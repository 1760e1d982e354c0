"""Admission control: at most `max_inflight` /v1 requests inside one gateway process; a request that cannot get
a slot within `admission_wait_s` is answered at once with 503 `overloaded` and `Retry-After`, instead of joining
a queue that only grows (past saturation, every extra request adds its whole service time to everyone's
latency). Counted in `kefu_gateway_shed_total{route}`. Applied after authentication and the per-key rate limit,
so unauthenticated or rate-limited calls never hold a slot.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from fastapi import Request

from services.gateway.errors import ApiError
from services.gateway.metrics import GatewayMetrics


class Admission:
    def __init__(self, max_inflight: int, wait_s: float, retry_after_s: int, metrics: GatewayMetrics):
        self.max_inflight, self.wait_s, self.retry_after_s = max_inflight, wait_s, retry_after_s
        self.metrics = metrics
        self.reset()

    def reset(self) -> None:
        """Fresh slots for a (re)started app: an asyncio primitive belongs to the event loop it first waited in."""
        self.semaphore = asyncio.Semaphore(self.max_inflight) if self.max_inflight > 0 else None

    async def __call__(self, request: Request) -> AsyncIterator[None]:
        """A FastAPI dependency holding one slot for the request's duration."""
        if self.semaphore is None:
            yield
            return
        try:
            await asyncio.wait_for(self.semaphore.acquire(), self.wait_s)
        except TimeoutError:
            route = request.scope.get("route")
            self.metrics.shed.labels(getattr(route, "path", "other")).inc()
            raise ApiError(
                503,
                "overloaded",
                f"the gateway is at capacity ({self.max_inflight} requests in flight); retry shortly",
                {"Retry-After": str(self.retry_after_s)},
            ) from None
        try:
            yield
        finally:
            self.semaphore.release()
