"""One model request per chat turn (issue 15): the gateway sends intent, sentiment and the FAQ encoder as ONE
`POST /v2/multi/infer` when they live at the same worker URLs and the workers offer it, with the same answers,
versions, canary routing, metrics and degradation as one request per model. Fake workers (tests/gateway_fakes)
that also speak the multi-model request, and one real worker process (shipped tokenizers, fake backend)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

import tests.gateway_app as gateway_app
from services.canary.backends import write_atomic
from services.gateway.clients.inference import ModelClient
from services.gateway.clients.upstream import WorkerPool
from services.gateway.metrics import GatewayMetrics
from services.gateway.settings import GatewaySettings
from tests.gateway_app import Gateway, build

TEXTS = ["我的快递到哪了", "我要投诉，太差了", "怎么申请退款", "运费怎么算", "转人工", "物流太慢了，气死了"]


class MultiWorkers(gateway_app.FakeWorkers):
    """FakeWorkers plus `GET /v2` (extensions) and `POST /v2/multi/infer` answered model by model by the
    one-model handler; `fail` = {(model, version)} answered 500 on either path."""

    def __init__(self, urls, max_batch_size=64):
        super().__init__(urls, max_batch_size)
        self.offer = True
        self.fail: set[tuple[str, str]] = set()
        self.multi: list[list[dict]] = []  # the `models` of each combined request
        self.single: list[str] = []  # paths of one-model infer requests
        self.transport = httpx.MockTransport(self.route)

    def route(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/v2":
            extensions = ["model_repository"] + (["multi_model_infer"] if self.offer else [])
            return httpx.Response(200, json={"name": "fake", "version": "1", "extensions": extensions})
        if path == "/v2/multi/infer":
            if not self.offer:
                return httpx.Response(404, json={"detail": "Not Found"})
            body = json.loads(request.content)
            self.multi.append(body["models"])
            results = []
            for ref in body["models"]:
                version = ref.get("version")
                sub = f"/v2/models/{ref['name']}" + (f"/versions/{version}" if version else "") + "/infer"
                one = self.one(
                    httpx.Request("POST", request.url.copy_with(path=sub), json={"inputs": body["inputs"]})
                )
                if one.status_code == 200:
                    results.append(one.json())
                else:
                    error = {
                        "model_name": ref["name"],
                        "status": one.status_code,
                        "error": one.json()["error"],
                    }
                    results.append(error)
            return httpx.Response(200, json={"results": results})
        if path.endswith("/infer"):
            self.single.append(path)
            return self.one(request)
        return self.handle(request)

    def one(self, request: httpx.Request) -> httpx.Response:
        parts = request.url.path.strip("/").split("/")
        version = (
            parts[4]
            if len(parts) > 5
            else max(self.replicas[next(iter(self.replicas))].versions[parts[2]], key=int)
        )
        if (parts[2], version) in self.fail:
            return httpx.Response(500, json={"error": "engine crashed"})
        return self.handle(request)


def start(tmp_path, name: str, routing: dict | None = None, versions=("1",), **options) -> Gateway:
    folder = tmp_path / name
    folder.mkdir()
    options = {"cache_enabled": False, **options}
    if routing is not None:
        path = folder / "routing.yaml"
        write_atomic(path, yaml.safe_dump({"models": routing}))
        options |= {"routing_file": path, "routing_poll_s": 0.05}
    original = gateway_app.FakeWorkers

    class Fake(MultiWorkers):
        def __init__(self, urls, max_batch_size=64):
            super().__init__(urls, max_batch_size)
            for model in ("intent", "sentiment", "faq"):
                self.set_versions(model, list(versions))

    gateway_app.FakeWorkers = Fake
    try:
        app, fake, registry = build(folder, **options)
    finally:
        gateway_app.FakeWorkers = original
    client = TestClient(app)
    client.__enter__()
    return Gateway(app, client, fake, registry, app.state.kb.store)


@pytest.fixture
def gateways(tmp_path):
    made: list[Gateway] = []

    def make(name: str, **kw) -> Gateway:
        gw = start(tmp_path, name, **kw)
        made.append(gw)
        return gw

    yield make
    for gw in made:
        gw.client.__exit__(None, None, None)


def turn(gw: Gateway, text: str, session: str = "s-1") -> dict:
    r = gw.chat(text, session_id=session)
    assert r.status_code == 200, r.text
    answer = r.json()
    del answer["request_id"]
    return answer


def warm(gw: Gateway) -> None:
    """The first turn asks the workers for their extensions (in the background) and goes one model at a time."""
    turn(gw, "你好", session="warm-up")
    gw.fake.single.clear()


def test_one_request_per_turn_with_the_same_answers(gateways):
    combined, separate = gateways("combined"), gateways("separate", combined_model_calls=False)
    warm(combined)
    warm(separate)
    for i, text in enumerate(TEXTS):
        a, b = turn(combined, text, f"s-{i}"), turn(separate, text, f"s-{i}")
        assert a == b
    assert len(combined.fake.multi) == len(TEXTS) and combined.fake.single == []
    assert {m["name"] for m in combined.fake.multi[0]} == {"intent", "sentiment", "faq"}
    assert all(m.get("version") == "1" for m in combined.fake.multi[0])  # each model's pinned version
    assert separate.fake.multi == [] and len(separate.fake.single) == 3 * len(TEXTS)
    for model in ("intent", "sentiment", "faq"):  # per-model metrics as before
        labels = {"model": model, "version": "1", "role": "stable", "outcome": "ok"}
        assert combined.sample("kefu_gateway_model_requests_total", **labels) == len(TEXTS) + 1
        upstream = {"upstream": "faq_embed" if model == "faq" else model, "outcome": "ok"}
        assert combined.sample("kefu_gateway_upstream_duration_seconds_count", **upstream) == len(TEXTS) + 1


def test_chat_filler_reaches_sentiment_but_not_intent_or_the_faq_search(gateways):
    """亲，请问 … 呀~~ around a question: the intent model and the FAQ encoder read the question alone (the filler
    cost direct answers: issue 12), the sentiment model the whole message; combined or one request per model,
    the same answer."""
    combined, separate = gateways("combined"), gateways("separate", combined_model_calls=False)
    answers = []
    for gw in (combined, separate):
        warm(gw)
        seen: list[tuple[tuple[str, ...], list[str]]] = []

        def recording(request, _route=gw.fake.route, _seen=seen):
            if request.url.path.endswith("/infer"):
                body = json.loads(request.content)
                names = sorted(m["name"] for m in body.get("models", [])) or [request.url.path.split("/")[3]]
                _seen.append((tuple(names), body["inputs"][0]["data"]))
            return _route(request)

        gw.fake.transport.handler = recording
        answers.append(turn(gw, "亲，请问运费怎么算呀~~"))
        texts = {name: data for names, data in seen for name in names}
        assert texts["intent"] == texts["faq"] == ["运费怎么算"], seen
        assert texts["sentiment"] == ["亲,请问运费怎么算呀~~"], seen  # normalised (，→ ,), filler kept
    assert answers[0] == answers[1]
    # combined: intent and the encoder in one request, sentiment on its own (the texts differ)
    assert [sorted(m["name"] for m in models) for models in combined.fake.multi] == [["faq", "intent"]]


def test_order_numbers_reach_no_model_but_the_session_slots(gateways):
    """Spelt digit by digit, an order number crowded the question out of the models' tokens (issue 12): no model
    reads it; the session's slot extraction still does."""
    gw = gateways("combined")
    warm(gw)
    seen: list[str] = []

    def recording(request, _route=gw.fake.route):
        if request.url.path.endswith("/infer"):
            seen.extend(json.loads(request.content)["inputs"][0]["data"])
        return _route(request)

    gw.fake.transport.handler = recording
    answer = turn(gw, "订单号2024060112345678 怎么还没发货啊!!")
    assert seen and not any("2024060112345678" in t for t in seen), seen
    assert "怎么还没发货" in seen  # intent and the encoder: the question
    assert "订单号 怎么还没发货啊!!" in seen  # sentiment: the tone, without the number
    assert answer["slots"].get("order_no") == "2024060112345678"


def test_a_model_failing_inside_the_turn_degrades_only_its_part(gateways):
    combined, separate = gateways("combined"), gateways("separate", combined_model_calls=False)
    for gw in (combined, separate):
        warm(gw)
        gw.fake.down_models.add("sentiment")
    a, b = turn(combined, "物流太慢了"), turn(separate, "物流太慢了")
    assert a["degraded"] == ["sentiment_down"] and a == b
    # the failed part took the one-model path with its retry (both replicas), the others were answered at once
    assert combined.fake.single == ["/v2/models/sentiment/versions/1/infer"] * 2


def test_canary_sessions_keep_their_routing(gateways):
    """A turn routed to a canary calls the canary pool (own breakers) one model at a time; a stable turn
    under the same routing file is combined, each model at its pinned stable version."""
    routing = {"intent": {"stable": 1, "canary": 2, "weight": 100}}
    gw = gateways("canary", routing=routing, versions=("1", "2"))
    warm(gw)
    assert turn(gw, "我的快递到哪了")["model_versions"]["intent"] == "2"
    assert gw.fake.multi == [] and "/v2/models/intent/versions/2/infer" in gw.fake.single
    canary = {"model": "intent", "version": "2", "role": "canary"}
    assert gw.sample("kefu_gateway_model_requests_total", **canary, outcome="ok") == 2
    gw.fake.fail.add(("intent", "2"))  # a failing canary is answered by stable, counted against the canary
    assert turn(gw, "怎么申请退款")["model_versions"]["intent"] == "1"
    assert gw.sample("kefu_gateway_model_requests_total", **canary, outcome="error") >= 1

    stable_gw = gateways(
        "stable", routing={"intent": {"stable": 1, "canary": 2, "weight": 0}}, versions=("1", "2")
    )
    warm(stable_gw)
    assert turn(stable_gw, "我的快递到哪了")["model_versions"]["intent"] == "1"
    intent = next(m for m in stable_gw.fake.multi[-1] if m["name"] == "intent")
    assert intent["version"] == "1" and stable_gw.fake.single == []


def test_workers_without_the_extension_get_one_request_per_model(gateways):
    gw = gateways("old-workers")
    gw.fake.offer = False
    warm(gw)
    turn(gw, "运费怎么算")
    assert gw.fake.multi == [] and len(gw.fake.single) == 3


def test_different_worker_urls_per_model_get_one_request_per_model(gateways):
    gw = gateways("pools")
    gw.app.state.pool.replicas["sentiment"].pop()  # sentiment at one URL, intent and faq at two
    warm(gw)
    turn(gw, "运费怎么算")
    assert gw.fake.multi == [] and len(gw.fake.single) == 3


@pytest.fixture(scope="module")
def real_worker(tmp_path_factory):
    """`python -m services.worker` over the shipped models with the fake backend (real tokenizers, real HTTP)."""

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    root = Path(__file__).resolve().parent.parent
    port, internal = free_port(), free_port()
    log_path = tmp_path_factory.mktemp("worker") / "worker.log"
    env = {**os.environ, "KEFU_WORKER_INTERNAL_PORT": str(internal), "KEFU_WORKER_LOG_LEVEL": "info"}
    argv = [sys.executable, "-m", "services.worker", "--repository", str(root / "models" / "shipped")]
    argv += ["--backend", "fake", "--port", str(port), "--log-level", "info"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log_path.read_text()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}", log_path
    finally:
        proc.terminate()
        proc.wait(15)


def test_the_gateway_client_and_the_real_worker_speak_the_same_combined_request(real_worker):
    """Against a real worker: once its extension is read, one combined request answers exactly what three
    one-model calls answer (versions, labels, probabilities, embeddings)."""
    url, log_path = real_worker
    roles = ["intent", "sentiment", "faq"]

    async def main():
        settings = GatewaySettings(workers={role: [url] for role in roles})
        pool = WorkerPool(settings, GatewayMetrics(CollectorRegistry()))
        models = ModelClient(pool, pool.metrics)
        try:
            await pool.refresh()
            assert models.plan_combined(roles, "s-1") is None  # extensions not known yet: asked now
            await asyncio.gather(*models._multi_probes.values())
            routes = models.plan_combined(roles, "s-1")
            assert routes is not None
            text = ["我买的耳机一直没发货，物流也不更新，怎么回事"]
            combined = await models.predict_combined(routes, text)
            for role in roles:
                one = await models.predict(role, text, "s-1")
                both = combined[role]
                assert (both.version, both.predictions) == (one.version, one.predictions)
                if one.embeddings is not None:
                    assert both.embeddings.tolist() == one.embeddings.tolist()
        finally:
            await pool.close()

    asyncio.run(asyncio.wait_for(main(), 60))
    assert "POST /v2/multi/infer" in log_path.read_text()
