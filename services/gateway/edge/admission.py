"""Admission control: overload is refused fast, with 503 `overloaded` and `Retry-After`, instead of joining a
queue that only grows (past saturation, every extra request adds its whole service time to everyone's latency).

Two places, both counted in `kefu_gateway_shed_total{route}`:

1. `gate(app)`, the outermost ASGI layer, on /v1 paths only, before anything else runs (no authentication, no
   body read, no log line: a refusal costs next to nothing, so refusing does not itself overload the process).
   It refuses at once when every slot is taken (`max_inflight` /v1 requests inside the process) and
   - `max_queue` more are already waiting (or on their way to the slot), or
   - the event loop lags more than `max_loop_lag_s` (measured every `LAG_PROBE_S` by a task that sleeps and
     sees how late it wakes): the process is out of CPU, and any request let in now would wait behind work
     the loop cannot finish in time; the time a request spends before admission is otherwise invisible and
     unbounded. The gate stamps the request's arrival time for the second place.
2. `__call__`, a FastAPI dependency after authentication and the per-key rate limit (so unauthenticated or
   rate-limited calls never hold a slot): at most `max_inflight` requests hold a slot; one that cannot get a
   slot by `wait_s` after its arrival (queue-time cap, counted from the gate's stamp) gets the 503.

The HTTP server bounds what comes before the gate (`services/gateway/__main__.py`: uvicorn's
`limit_concurrency`, `backlog`, `timeout_keep_alive`).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable

from fastapi import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from services.gateway.core.errors import Unavailable, error_body
from services.gateway.metrics import GatewayMetrics

LAG_PROBE_S = 0.02  # how often the event-loop lag is measured
ARRIVED = "admission_arrived"  # scope["state"] key: the gate's clock reading when the request came in
ROUTES = frozenset({"/v1/chat", "/v1/intent", "/v1/sentiment", "/v1/faq/search"})  # metric labels


class Admission:
    def __init__(
        self,
        max_inflight: int,
        wait_s: float,
        retry_after_s: int,
        metrics: GatewayMetrics,
        *,
        max_queue: int = 0,
        max_loop_lag_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.max_inflight, self.wait_s, self.retry_after_s = max_inflight, wait_s, retry_after_s
        self.max_queue, self.max_loop_lag_s = max_queue, max_loop_lag_s
        self.metrics, self.clock = metrics, clock
        self.pending = 0  # /v1 requests past the gate, not answered yet
        self.loop_lag_s = 0.0  # the last measured event-loop lag
        self._lag_task: asyncio.Task | None = None
        self.reset()

    def reset(self) -> None:
        """Fresh slots for a (re)started app: an asyncio primitive belongs to the event loop it first waited in."""
        self.semaphore = asyncio.Semaphore(self.max_inflight) if self.max_inflight > 0 else None
        self.pending, self.loop_lag_s, self._lag_task = 0, 0.0, None

    # ── 1. the gate ─────────────────────────────────────────────────────────────────────────────────

    def gate(self, app: ASGIApp) -> ASGIApp:
        """`app` behind the gate (see the module docstring)."""

        async def gated(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
                return await app(scope, receive, send)
            self._watch_lag()
            why = self.overloaded()
            if why is not None:
                return await self._refuse(scope, send, why)
            scope.setdefault("state", {})[ARRIVED] = self.clock()
            self.pending += 1
            try:
                await app(scope, receive, send)
            finally:
                self.pending -= 1

        return gated

    def overloaded(self) -> str | None:
        """Why a request arriving now is refused at the gate, or None."""
        if self.max_inflight <= 0 or self.pending < self.max_inflight:
            return None  # a slot is free: never refused here (a lagging loop alone is no overload)
        if self.pending >= self.max_inflight + self.max_queue:
            return f"the gateway is at capacity ({self.pending} requests in flight or queued); retry shortly"
        if self.max_loop_lag_s > 0 and self.loop_lag_s > self.max_loop_lag_s:
            return "the gateway is at capacity (out of CPU time); retry shortly"
        return None

    async def _refuse(self, scope: Scope, send: Send, message: str) -> None:
        path = scope["path"]
        self.metrics.shed.labels(path if path in ROUTES else "other").inc()
        rid = str(uuid.uuid4())
        body = json.dumps(error_body("overloaded", message, rid)).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(self.retry_after_s).encode()),
            (b"x-request-id", rid.encode()),
        ]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _watch_lag(self) -> None:
        if self.max_loop_lag_s <= 0 or (self._lag_task is not None and not self._lag_task.done()):
            return
        self._lag_task = asyncio.get_running_loop().create_task(self._measure_lag())

    async def _measure_lag(self) -> None:
        """Sleeps `LAG_PROBE_S` over and over; how late it wakes is the lag. Ends after a quiet second (no /v1
        request pending), restarted by the next request."""
        loop = asyncio.get_running_loop()
        quiet_since = None
        while True:
            expected = loop.time() + LAG_PROBE_S
            await asyncio.sleep(LAG_PROBE_S)
            self.loop_lag_s = max(0.0, loop.time() - expected)
            if self.pending:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = loop.time()
            elif loop.time() - quiet_since > 1.0:
                self.loop_lag_s = 0.0
                return

    # ── 2. the slot ─────────────────────────────────────────────────────────────────────────────────

    async def __call__(self, request: Request) -> AsyncIterator[None]:
        """A FastAPI dependency holding one slot for the request's duration; the wait for it ends `wait_s`
        after the request's arrival at the gate (its start here when the app runs without the gate)."""
        if self.semaphore is None:
            yield
            return
        arrived = request.scope.get("state", {}).get(ARRIVED)
        now = self.clock()
        left = self.wait_s - (now - arrived if arrived is not None else 0.0)
        try:
            if not self.semaphore.locked():
                await self.semaphore.acquire()  # a free slot: taken without suspending
            elif left <= 0:
                raise TimeoutError  # waited its queue time already (before authentication, or in the loop)
            else:
                await asyncio.wait_for(self.semaphore.acquire(), left)
        except TimeoutError:
            route = request.scope.get("route")
            self.metrics.shed.labels(getattr(route, "path", "other")).inc()
            raise Unavailable(
                "overloaded",
                f"the gateway is at capacity ({self.max_inflight} requests in flight); retry shortly",
                retry_after_s=str(self.retry_after_s),
            ) from None
        try:
            yield
        finally:
            self.semaphore.release()
