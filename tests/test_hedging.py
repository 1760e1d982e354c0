"""Hedged worker calls (services/gateway/clients/hedging.py): a replica that does not answer within
`hedge_after_s` costs that delay, not the call timeout; the hedge stays within its budget; the losing call still
tells the replica's breaker."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from prometheus_client import CollectorRegistry

from services.gateway.clients.hedging import Failed, HedgeBudget, first_good
from services.gateway.clients.upstream import UpstreamError, WorkerPool
from services.gateway.metrics import GatewayMetrics
from services.gateway.settings import GatewaySettings
from tests.gateway_fakes import FakeWorkers

A, B = "http://10.0.0.1:8001", "http://10.0.0.2:8001"


class Hanging(httpx.AsyncBaseTransport):
    """The fake workers, with `slow` replicas silent until their call times out after `delay_s` (a SIGSTOPped
    process, a cut link; a custom transport gets no timeout from httpx, so it raises the timeout itself)."""

    def __init__(self, fake: FakeWorkers, slow: set[str], delay_s: float):
        self.fake, self.slow, self.delay_s = fake, slow, delay_s

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        base = f"{request.url.scheme}://{request.url.host}:{request.url.port}"
        if base in self.slow and request.url.path.endswith("/infer"):
            await asyncio.sleep(self.delay_s)
            raise httpx.ReadTimeout("timed out", request=request)
        response = self.fake.handle(request)
        return httpx.Response(response.status_code, content=response.content, headers=response.headers)


def pool_with(slow: set[str], delay_s: float, **settings) -> WorkerPool:
    workers = {role: [A, B] for role in ("intent", "sentiment", "faq")}
    cfg = GatewaySettings(workers=workers, breaker_failures=5, **settings)
    return WorkerPool(
        cfg, GatewayMetrics(CollectorRegistry()), transport=Hanging(FakeWorkers([A, B]), slow, delay_s)
    )


def test_a_hung_replica_costs_the_hedge_delay_not_the_call_timeout():
    async def main():
        pool = pool_with({A}, delay_s=1.0, hedge_after_s=0.1)
        await pool.start()
        took = []
        for _ in range(4):  # round robin: half of the calls go to A first
            started = time.perf_counter()
            result = await pool.infer("intent", ["我的快递到哪了"])
            took.append(time.perf_counter() - started)
            assert len(result.outputs["label"]) == 1
        await asyncio.sleep(1.1)  # the losing calls to A run to their own timeout ...
        failures = pool.replicas["intent"][0].breaker._failures
        await pool.close()
        return took, failures

    took, failures = asyncio.run(main())
    assert max(took) < 0.6, took  # without a hedge, a call that went to A first waited for its timeout (1 s)
    assert failures >= 1  # ... and A's breaker learned it hangs


def test_hedges_stay_within_their_budget():
    calls = []

    async def slow_then_fast(replica: str, extra: bool) -> str:
        calls.append(replica)
        await asyncio.sleep(0.2 if replica == "a" else 0.0)
        return replica

    async def main():
        budget = HedgeBudget(ratio=0.1, burst=1)
        answers = []
        for _ in range(3):
            answers.append(
                await first_good(
                    iter(["a", "b"]), slow_then_fast, attempts=2, hedge_after_s=0.02, budget=budget
                )
            )
        return answers

    answers = asyncio.run(main())
    assert answers == ["b", "a", "a"]  # one hedge in the bucket; then the slow replica is waited for
    assert calls == ["a", "b", "a", "a"]


def test_a_failure_is_retried_and_a_refusal_is_not():
    async def fails_on_a(replica: str, extra: bool) -> str:
        if replica == "a":
            raise Failed(UpstreamError("intent", "error", "HTTP 503", 503))
        return replica

    async def refused(replica: str, extra: bool) -> str:
        raise UpstreamError("intent", "error", "HTTP 400", 400)

    assert asyncio.run(first_good(iter(["a", "b"]), fails_on_a, attempts=2, hedge_after_s=0.5)) == "b"
    with pytest.raises(Failed):
        asyncio.run(first_good(iter(["a", "a"]), fails_on_a, attempts=2))
    with pytest.raises(UpstreamError, match="HTTP 400"):
        asyncio.run(first_good(iter(["a", "b"]), refused, attempts=2, hedge_after_s=0.5))
    with pytest.raises(LookupError):
        asyncio.run(first_good(iter([]), refused, attempts=2))
