"""Upstream calls: V2 requests, retries on another replica, circuit breakers, chunking by max batch size,
metadata and readiness probes, and the model router seam (fake workers over httpx.MockTransport)."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from services.gateway.clients.breaker import BreakerState, CircuitBreaker
from services.gateway.clients.inference import ModelClient, Route
from services.gateway.clients.upstream import UpstreamError, WorkerPool
from services.gateway.metrics import GatewayMetrics
from services.gateway.settings import GatewaySettings
from tests.gateway_fakes import FakeWorkers

A, B = "http://127.0.0.1:18001", "http://127.0.0.2:18001"


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def make_pool(urls=(A, B), clock=None, **overrides):
    fake = FakeWorkers(list(urls))
    workers = {role: list(urls) for role in ("intent", "sentiment", "faq")}
    settings = GatewaySettings(workers=workers, **{"breaker_failures": 2, "breaker_reset_s": 5, **overrides})
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry)
    pool = WorkerPool(settings, metrics, transport=fake.transport, **({"clock": clock} if clock else {}))
    return fake, pool, registry


def sample(registry, name, **labels):
    return registry.get_sample_value(name, labels) or 0.0


def run(coro):
    return asyncio.run(coro)


def test_breaker_opens_after_threshold_then_half_open_trial_closes_or_reopens():
    clock = Clock()
    states = []
    b = CircuitBreaker(failure_threshold=3, reset_timeout_s=10, clock=clock, on_change=states.append)
    for _ in range(2):
        assert b.allow()
        b.record_failure()
    assert b.state is BreakerState.CLOSED
    b.record_success()  # a success resets the count
    for _ in range(3):
        b.record_failure()
    assert b.state is BreakerState.OPEN and not b.allow()
    clock.now += 10
    assert b.state is BreakerState.HALF_OPEN
    assert b.allow() and not b.allow()  # one trial at a time
    b.record_failure()
    assert b.state is BreakerState.OPEN and not b.allow()
    clock.now += 10
    assert b.allow()
    b.record_success()
    assert b.state is BreakerState.CLOSED and b.allow()
    assert states == [0, 2, 1, 2, 1, 0]


def test_infer_sends_v2_bytes_and_decodes_probs_and_labels():
    fake, pool, _ = make_pool(urls=(A,))
    result = run(pool.infer("intent", ["我要投诉", "快递到哪了"]))
    assert result.model_version == "1"
    assert result.outputs["label"] == ["投诉", "物流查询"]
    assert result.outputs["probs"].shape == (2, 10)
    assert fake.replica(A).texts == [("intent", "1", ["我要投诉", "快递到哪了"])]


def test_connect_error_is_retried_on_another_replica_and_counted():
    fake, pool, registry = make_pool()
    fake.replica(A).mode = "down"
    for _ in range(4):  # round-robin: every other call starts on A and must move to B
        assert run(pool.infer("sentiment", ["东西太差了"])).outputs["label"] == ["negative"]
    assert sample(registry, "kefu_gateway_upstream_retries_total", upstream="sentiment") == 2
    assert (
        sample(
            registry, "kefu_gateway_upstream_duration_seconds_count", upstream="sentiment", outcome="error"
        )
        == 2
    )


@pytest.mark.parametrize("mode,outcome", [("error", "error"), ("timeout", "timeout")])
def test_5xx_and_timeouts_are_retried_on_another_replica(mode, outcome):
    fake, pool, registry = make_pool()
    fake.replica(A).mode = mode
    for _ in range(2):
        run(pool.infer("intent", ["你好"]))
    assert fake.replica(B).calls[("intent", "infer")] == 2
    assert (
        sample(registry, "kefu_gateway_upstream_duration_seconds_count", upstream="intent", outcome=outcome)
        == 1
    )


def test_4xx_is_not_retried():
    fake, pool, registry = make_pool()
    fake.replica(A).mode = fake.replica(B).mode = "reject"
    with pytest.raises(UpstreamError) as e:
        run(pool.infer("intent", ["你好"]))
    assert e.value.status == 400
    calls = fake.replica(A).calls[("intent", "infer")] + fake.replica(B).calls[("intent", "infer")]
    assert calls == 1
    assert sample(registry, "kefu_gateway_upstream_retries_total", upstream="intent") == 0


def test_breaker_opens_skips_the_replica_then_half_open_trial_recovers():
    clock = Clock()
    fake, pool, registry = make_pool(urls=(A,), clock=clock, retries=0)
    fake.replica(A).mode = "down"
    for _ in range(2):
        with pytest.raises(UpstreamError):
            run(pool.infer("intent", ["你好"]))
    label = "intent@127.0.0.1:18001"
    assert sample(registry, "kefu_gateway_circuit_state", upstream=label) == 2
    with pytest.raises(UpstreamError) as e:
        run(pool.infer("intent", ["你好"]))
    assert e.value.outcome == "circuit_open"
    assert fake.replica(A).calls[("intent", "infer")] == 2  # the open breaker made no call
    fake.replica(A).mode = "ok"
    clock.now += 5
    assert sample(registry, "kefu_gateway_circuit_state", upstream=label) == 2
    assert run(pool.infer("intent", ["你好"])).outputs["label"] == ["商品咨询"]  # the half-open trial
    assert sample(registry, "kefu_gateway_circuit_state", upstream=label) == 0


def test_every_replica_down_raises_after_trying_each_once():
    fake, pool, _ = make_pool()
    fake.replica(A).mode = fake.replica(B).mode = "down"
    with pytest.raises(UpstreamError) as e:
        run(pool.infer("faq", ["运费"]))
    assert e.value.outcome == "error"
    assert fake.replica(A).calls[("faq", "infer")] == 1 and fake.replica(B).calls[("faq", "infer")] == 1


def test_lists_are_split_into_chunks_of_the_models_max_batch_size():
    fake, pool, _ = make_pool(urls=(A,))
    fake.max_batch_size = 4
    run(pool.refresh())
    assert pool.info["intent"].max_batch_size == 4
    texts = [f"问题{i}" for i in range(10)]
    result = run(pool.infer("intent", texts))
    assert len(result.outputs["label"]) == 10 and result.outputs["probs"].shape == (10, 10)
    sizes = [len(t) for _, _, t in fake.replica(A).texts]
    assert sorted(sizes) == [2, 4, 4]
    assert [t for _, _, chunk in fake.replica(A).texts for t in chunk] == texts  # order kept


def test_refresh_reads_metadata_and_probes_readiness():
    fake, pool, registry = make_pool()
    fake.set_versions("intent", ["1", "2"])
    fake.replica(B).mode = "down"
    info = run(pool.refresh())
    assert info["intent"].latest == "2" and info["intent"].labels[5] == "投诉"
    assert info["faq"].dim == 32 and info["faq"].task == "embedding"
    assert sample(registry, "kefu_gateway_upstream_up", upstream="intent@127.0.0.1:18001") == 1
    assert sample(registry, "kefu_gateway_upstream_up", upstream="intent@127.0.0.2:18001") == 0
    assert pool.usable("intent")
    fake.replica(A).mode = "down"
    run(pool.refresh())
    assert not pool.usable("intent")


def test_model_client_pins_the_latest_version_and_records_per_version_metrics():
    fake, pool, registry = make_pool(urls=(A,))
    fake.set_versions("intent", ["1", "2"])
    client = ModelClient(pool, pool.metrics)
    run(pool.refresh())
    answer = run(client.predict("intent", ["我要投诉"], "s1"))
    assert answer.version == "2" and answer.predictions[0].label == "投诉"
    assert fake.replica(A).texts[-1][1] == "2"
    labels = {"model": "intent", "version": "2", "role": "stable"}
    assert sample(registry, "kefu_gateway_model_requests_total", **labels, outcome="ok") == 1
    assert sample(registry, "kefu_gateway_model_predictions_total", **labels, label="投诉") == 1
    assert sample(registry, "kefu_gateway_model_confidence_count", **labels) == 1


def test_a_version_gone_after_hot_reload_refreshes_and_calls_unversioned():
    fake, pool, _ = make_pool(urls=(A,))
    client = ModelClient(pool, pool.metrics)

    async def scenario():
        await pool.refresh()
        fake.set_versions("intent", ["2"])  # the worker retired v1
        answer = await client.predict("intent", ["你好"])
        await client._refreshing
        return answer

    answer = run(scenario())
    assert answer.version == "2" and pool.info["intent"].latest == "2"


def test_a_custom_router_chooses_the_version_and_role():
    fake, pool, registry = make_pool(urls=(A,))
    fake.set_versions("sentiment", ["1", "2"])

    class Canary:
        def route(self, model, session_id):
            return Route("1", "canary") if session_id == "lucky" else Route("2", "stable")

    client = ModelClient(pool, pool.metrics, Canary())
    assert run(client.predict("sentiment", ["好"], "lucky")).version == "1"
    assert run(client.predict("sentiment", ["好"], "other")).version == "2"
    assert (
        sample(
            registry,
            "kefu_gateway_model_requests_total",
            model="sentiment",
            version="1",
            role="canary",
            outcome="ok",
        )
        == 1
    )


def test_half_open_trials_come_back_at_a_short_growing_interval_capped_at_the_maximum():
    clock = Clock()
    b = CircuitBreaker(failure_threshold=1, reset_timeout_s=0.5, max_reset_timeout_s=2.0, clock=clock)
    b.record_failure()
    waits = []
    for _ in range(5):  # a long outage: every trial fails
        waited = 0.0
        while not b.allow():
            clock.now += 0.25  # exact in binary: no drift
            waited += 0.25
        waits.append(waited)
        b.record_failure()
    assert waits == [0.5, 1.0, 2.0, 2.0, 2.0]
    clock.now += 2.0
    assert b.allow()
    b.record_success()  # the upstream is back: the next outage starts short again
    b.record_failure()
    assert not b.allow()
    clock.now += 0.5
    assert b.allow()


def test_a_replica_back_after_a_long_outage_serves_again_within_two_seconds_by_default():
    clock = Clock()
    defaults = {
        name: GatewaySettings.model_fields[name].default for name in ("breaker_reset_s", "breaker_failures")
    }
    fake, pool, _ = make_pool(urls=(A,), clock=clock, retries=0, **defaults)
    fake.replica(A).mode = "down"
    for _ in range(60):  # a minute of outage, one request a second
        with pytest.raises(UpstreamError):
            run(pool.infer("intent", ["你好"]))
        clock.now += 1.0
    fake.replica(A).mode = "ok"
    back_at = clock.now
    while True:
        try:
            run(pool.infer("intent", ["你好"]))
            break
        except UpstreamError:
            clock.now += 0.1
    assert clock.now - back_at <= 2.0
