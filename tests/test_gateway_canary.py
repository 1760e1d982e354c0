"""Canary routing and shadow traffic through the gateway (issue 7), against fake workers serving versions 1 and 2:
stickiness by session, weights 0 and 100, hot reload of the routing file under load without a failed request,
canary failures answered by stable, shadow comparisons, and shadow failures (error, hang, garbage, saturation)
invisible to the client."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from services.canary.backends import write_atomic
from services.canary.routing import bucket, sticky_id
from tests.gateway_app import Gateway, build

TEXTS = ["我的快递到哪了", "我要投诉", "怎么申请退款", "这个商品有货吗", "转人工", "物流太慢了"]


class VersionFaults(httpx.MockTransport):
    """The fake workers, except that calls to one (model, version) fail: error (500), hang, or garbage (200)."""

    def __init__(self, handler):
        super().__init__(handler)
        self.faults: dict[tuple[str, str], str] = {}
        self.hung = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        parts = request.url.path.strip("/").split("/")
        if len(parts) > 5 and parts[-1] == "infer":
            mode = self.faults.get((parts[2], parts[4]))
            if mode == "error":
                return httpx.Response(500, json={"error": "engine crashed"})
            if mode == "hang":
                self.hung += 1
                await asyncio.sleep(30)
            if mode == "garbage":
                return httpx.Response(200, json={"model_version": parts[4], "outputs": "nonsense"})
            if mode == "wrong_shape":
                body = {"name": "probs", "shape": [3], "datatype": "FP32", "data": [1, 2, 3]}
                return httpx.Response(200, json={"model_version": parts[4], "outputs": [body]})
        return await super().handle_async_request(request)


def routing(path: Path, **models: dict) -> Path:
    import yaml

    write_atomic(path, yaml.safe_dump({"models": models}, allow_unicode=True))
    return path


@pytest.fixture
def make_gw(tmp_path):
    """Start a gateway whose intent / faq workers serve versions 1 and 2, with the given routing."""
    started: list[TestClient] = []

    def make(routing_models: dict, wrap=None, **overrides) -> tuple[Gateway, VersionFaults, Path]:
        path = routing(tmp_path / "routing.yaml", **routing_models)
        options = {"routing_file": path, "routing_poll_s": 0.05, "cache_enabled": False, **overrides}
        app, fake, registry = _build(tmp_path, options)
        if wrap is not None:  # before start: the gateway reads the workers' metadata when it starts
            app.state.transport_faults.handler = wrap(app.state.transport_faults.handler)
        client = TestClient(app)
        client.__enter__()
        started.append(client)
        return Gateway(app, client, fake, registry, app.state.kb.store), app.state.transport_faults, path

    yield make
    for client in started:
        client.__exit__(None, None, None)


def _build(tmp_path, options):
    import tests.gateway_app as gateway_app

    made = {}
    original = gateway_app.FakeWorkers

    class Fake(original):
        def __init__(self, urls, max_batch_size=64):
            super().__init__(urls, max_batch_size)
            self.transport = VersionFaults(self.handle)
            for model in ("intent", "sentiment", "faq"):
                self.set_versions(model, ["1", "2"])
            made["fake"] = self

    gateway_app.FakeWorkers = Fake
    try:
        app, fake, registry = build(tmp_path, **options)
    finally:
        gateway_app.FakeWorkers = original
    app.state.transport_faults = made["fake"].transport
    return app, fake, registry


def served(gw: Gateway, session: str, text: str = "我的快递到哪了") -> str:
    r = gw.chat(text, session_id=session)
    assert r.status_code == 200, r.text
    return r.json()["model_versions"]["intent"]


def test_sticky_sessions_follow_their_bucket(make_gw):
    gw, _, _ = make_gw({"intent": {"stable": 1, "canary": 2, "weight": 30}})
    sessions = [f"sess-{i}" for i in range(120)]
    first = {s: served(gw, s) for s in sessions}
    for s in sessions[:40]:  # the same session keeps its version, whatever it says
        for text in TEXTS[:3]:
            assert served(gw, s, text) == first[s]
    expected = {s: "2" if bucket("intent", sticky_id("demo", s)) < 3000 else "1" for s in sessions}
    assert first == expected
    assert 0.15 < sum(v == "2" for v in first.values()) / len(sessions) < 0.45
    canary = gw.sample(
        "kefu_gateway_model_requests_total", model="intent", version="2", role="canary", outcome="ok"
    )
    assert canary == sum(v == "2" for v in first.values()) + 3 * sum(first[s] == "2" for s in sessions[:40])


@pytest.mark.parametrize("weight", [0, 100])
def test_weights_zero_and_hundred_are_exact(make_gw, weight):
    gw, _, _ = make_gw({"intent": {"stable": 1, "canary": 2, "weight": weight}})
    versions = {served(gw, f"w-{i}") for i in range(60)}
    assert versions == ({"1"} if weight == 0 else {"2"})
    calls_v2 = sum(1 for r in gw.fake.replicas.values() for m, v, _ in r.texts if m == "intent" and v == "2")
    assert calls_v2 == (0 if weight == 0 else 60)
    r = gw.client.post("/v1/intent", json={"text": TEXTS}, headers={"X-API-Key": "kefu-demo-key-change-me"})
    assert r.status_code == 200 and r.json()["model_version"] == ("1" if weight == 0 else "2")


def test_hot_reload_under_load_drops_no_request(make_gw):
    gw, _, path = make_gw({"intent": {"stable": 1}})
    stop = threading.Event()
    results: list[tuple[float, int, str | None]] = []

    def client_loop(n: int) -> None:
        i = 0
        while not stop.is_set():
            r = gw.chat(TEXTS[i % len(TEXTS)], session_id=f"load-{n}-{i}")
            version = r.json()["model_versions"].get("intent") if r.status_code == 200 else None
            results.append((time.monotonic(), r.status_code, version))
            i += 1

    threads = [threading.Thread(target=client_loop, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    watcher = gw.app.state.canary.watcher
    try:
        for cycle in range(3):
            for route in ({"stable": 1, "canary": 2, "weight": 100}, {"stable": 1, "canary": 2, "weight": 0}):
                reloads = watcher.reloads
                routing(path, intent=route)
                deadline = time.monotonic() + 10
                while watcher.reloads == reloads and time.monotonic() < deadline:
                    time.sleep(0.02)
                assert watcher.reloads > reloads, f"cycle {cycle}: the routing file was not reloaded"
                time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    statuses = [s for _, s, _ in results]
    assert len(results) > 30 and set(statuses) == {200}, f"{len(results)} requests, statuses {set(statuses)}"
    assert {v for *_, v in results} == {"1", "2"}  # both tables served while the file flipped
    assert watcher.rejected == 0


def test_canary_failure_is_answered_by_stable(make_gw):
    gw, faults, _ = make_gw({"intent": {"stable": 1, "canary": 2, "weight": 100}})
    for i, mode in enumerate(("error", "garbage", "wrong_shape")):
        faults.faults[("intent", "2")] = mode
        r = gw.chat("我的快递到哪了", session_id=f"f-{i}")
        assert r.status_code == 200, r.text
        assert r.json()["model_versions"]["intent"] == "1" and r.json()["intent"]["label"] == "物流查询"
    errors = gw.sample(
        "kefu_gateway_model_requests_total", model="intent", version="2", role="canary", outcome="error"
    )
    assert errors == 3
    # the canary's failures opened no breaker of the stable workers
    assert all(
        r["circuit"] == "closed" for r in gw.internal.get("/readyz").json()["upstreams"]["intent"]["replicas"]
    )


def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_shadow_compares_top_labels_and_confidence(make_gw):
    gw, _, _ = make_gw({"intent": {"stable": 1, "canary": 2, "weight": 0, "shadow": 100}})
    gw.fake.override[("intent", "2")] = "退款"  # the candidate answers 退款 to everything
    for i, text in enumerate(TEXTS):
        assert served(gw, f"sh-{i}", text) == "1"
    labels = {"model": "intent", "stable_version": "1", "canary_version": "2"}

    def total() -> float:
        return sum(
            gw.sample("kefu_gateway_shadow_comparisons_total", **labels, agree=a) for a in ("true", "false")
        )

    wait_for(lambda: total() == len(TEXTS))
    # stable says 物流查询 x2, 投诉, 退款, 商品咨询, 转人工: only 怎么申请退款 agrees
    assert gw.sample("kefu_gateway_shadow_comparisons_total", **labels, agree="true") == 1
    assert gw.sample("kefu_gateway_shadow_confidence_delta_count", **labels) == len(TEXTS)
    shadow_ok = {"model": "intent", "version": "2", "role": "shadow"}
    assert gw.sample("kefu_gateway_model_requests_total", **shadow_ok, outcome="ok") == len(TEXTS)
    assert gw.sample("kefu_gateway_model_predictions_total", **shadow_ok, label="退款") == len(TEXTS)
    assert gw.sample("kefu_gateway_model_confidence_count", **shadow_ok) == len(TEXTS)


@pytest.mark.parametrize("mode", ["error", "hang", "garbage", "wrong_shape"])
def test_shadow_failures_are_invisible_to_the_client(make_gw, mode):
    gw, faults, _ = make_gw(
        {"intent": {"stable": 1, "canary": 2, "shadow": 100}}, shadow_timeout_s=0.3, call_timeout_s=5
    )
    faults.faults[("intent", "2")] = mode
    for i, text in enumerate(TEXTS):
        started = time.monotonic()
        r = gw.chat(text, session_id=f"x-{i}")
        elapsed = time.monotonic() - started
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model_versions"]["intent"] == "1" and body["degraded"] == []
        assert elapsed < 1.0, f"{mode}: the client waited {elapsed:.2f} s"
    outcome = {"error": "error", "hang": "timeout", "garbage": "error", "wrong_shape": "error"}[mode]
    shadow = {"model": "intent", "version": "2", "role": "shadow"}
    wait_for(lambda: gw.sample("kefu_gateway_model_requests_total", **shadow, outcome=outcome) == len(TEXTS))
    assert gw.sample("kefu_gateway_shadow_comparisons_total", model="intent", stable_version="1",
                     canary_version="2", agree="true") == 0  # fmt: skip
    assert all(
        r["circuit"] == "closed" for r in gw.internal.get("/readyz").json()["upstreams"]["intent"]["replicas"]
    )


def test_shadow_work_is_bounded_and_drops_are_counted(make_gw):
    gw, faults, _ = make_gw(
        {"intent": {"stable": 1, "canary": 2, "shadow": 100}}, shadow_timeout_s=5, shadow_max_inflight=2
    )
    faults.faults[("intent", "2")] = "hang"
    for i in range(8):
        assert gw.chat(TEXTS[i % len(TEXTS)], session_id=f"b-{i}").status_code == 200
    runner = gw.app.state.canary.shadow
    assert runner.inflight == 2 and faults.hung == 2
    assert gw.sample("kefu_gateway_shadow_dropped_total", model="intent", reason="saturated") == 6


def test_encoder_canary_is_shadow_only_and_compares_top_faq(make_gw):
    gw, _, _ = make_gw({"faq": {"stable": 1, "canary": 2, "weight": 100}})
    for i in range(4):
        r = gw.chat("下单后多久发货？", session_id=f"e-{i}")
        assert r.status_code == 200 and r.json()["model_versions"]["faq"] == "1"
        assert r.json()["faq_hits"][0]["faq_id"] == "faq-001"
    labels = {"model": "faq", "stable_version": "1", "canary_version": "2"}
    wait_for(lambda: gw.sample("kefu_gateway_shadow_comparisons_total", **labels, agree="true") == 4)
    assert (
        gw.sample("kefu_gateway_model_requests_total", model="faq", version="2", role="shadow", outcome="ok")
        == 4
    )
    assert (
        gw.sample("kefu_gateway_model_requests_total", model="faq", version="2", role="canary", outcome="ok")
        == 0
    )


def reversed_labels_in(versions: set[str]):
    """A handler wrapper: the fake workers' versions in `versions` list their labels in reverse order (metadata
    and probs alike), the model-level metadata describes the latest version, as a real worker's does, and
    answers carry `probs` only (no `label` output), so the gateway names every class from the label order of
    the version that answered."""
    import json

    from tests.gateway_fakes import INTENTS, SENTIMENTS

    def labels(model: str, version: str) -> list[str]:
        base = INTENTS if model == "intent" else SENTIMENTS
        return base[::-1] if version in versions else base

    def wrap(handler):
        def handle(request: httpx.Request) -> httpx.Response:
            response = handler(request)
            parts = request.url.path.strip("/").split("/")  # v2 models m [versions v] [infer|ready]
            model, kind = parts[2], parts[-1]
            if response.status_code != 200 or model == "faq" or kind == "ready":
                return response
            body = response.json()
            if kind == "infer":
                version = body["model_version"]
                out = next(o for o in body["outputs"] if o["name"] == "probs")
                n, width = out["shape"]
                rows = [out["data"][i * width : (i + 1) * width] for i in range(n)]
                if version in versions:
                    rows = [row[::-1] for row in rows]
                out["data"] = [x for row in rows for x in row]
                body["outputs"] = [out]
            else:
                version = parts[4] if len(parts) == 5 else max(body["versions"], key=int)
                body["parameters"]["labels"] = labels(model, version)
            return httpx.Response(200, content=json.dumps(body).encode())

        return handle

    return wrap


def test_versions_with_different_label_orders_are_labelled_by_their_own(make_gw):
    """A worker serving two versions whose labels.txt differ: each answer is named by its own version."""
    split = {"stable": 1, "canary": 2, "weight": 50}
    gw, _, _ = make_gw({"intent": split, "sentiment": split}, wrap=reversed_labels_in({"2"}))
    served_by = {}
    for i in range(40):
        session = f"lab-{i}"
        r = gw.chat("快递太差了", session_id=session)  # the fakes: 物流查询 0.88, negative 0.99
        assert r.status_code == 200, r.text
        body = r.json()
        versions = body["model_versions"]
        expected = "2" if bucket("sentiment", sticky_id("demo", session)) < 5000 else "1"
        assert versions["sentiment"] == expected
        assert body["intent"] == {"label": "物流查询", "confidence": 0.88}, versions
        assert body["sentiment"]["label"] == "negative", versions
        assert body["sentiment"]["negative"] == pytest.approx(0.99), versions
        served_by.setdefault(versions["intent"], set()).add(versions["sentiment"])
    assert set(served_by) == {"1", "2"}, "both intent versions answered"
    assert set().union(*served_by.values()) == {"1", "2"}, "both sentiment versions answered"
    known = gw.app.state.orchestrator.models.version_labels
    assert known[("intent", "1")][0] == "物流查询" and known[("intent", "2")][0] == "其他/闲聊"
    assert known[("sentiment", "1")] == ["negative", "positive"]
    assert known[("sentiment", "2")] == ["positive", "negative"]


def test_invalid_routing_file_fails_the_start_naming_the_problem(tmp_path):
    from services.canary.routing import RoutingError

    path = routing(tmp_path / "routing.yaml", intent={"stable": 1, "weight": 10})
    with pytest.raises(RoutingError, match="need a canary version"):
        build(tmp_path, routing_file=path)


def test_empty_routing_setting_means_no_canary(tmp_path, monkeypatch):
    from services.gateway.settings import GatewaySettings

    monkeypatch.setenv("KEFU_GATEWAY_ROUTING_FILE", "")
    assert GatewaySettings().routing_file is None
    app, _, _ = build(tmp_path)
    assert app.state.canary is None
