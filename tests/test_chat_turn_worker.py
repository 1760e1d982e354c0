"""The worker's multi-model request (`POST /v2/multi/infer`, issue 15): one request per chat turn, the text
tokenised once per vocabulary, each model answering exactly what its own infer endpoint answers, and failing
on its own. The shipped models' real tokenizers (models/shipped) over fake, id-deterministic backends."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from services.runtime.repository import ModelRepository
from services.worker.app import create_worker_app
from services.worker.backends import FakeBackend
from services.worker.manager import ModelManager
from services.worker.metrics import WorkerMetrics
from services.worker.settings import WorkerSettings

SHIPPED = Path(__file__).resolve().parent.parent / "models" / "shipped"
LONG = (
    "我上周在你们店买的蓝牙耳机到现在还没有发货，物流一直不更新，客服也不回消息，" * 4
)  # > every max_seq_len
TEXTS = ["我的快递到哪了", LONG]


def body(texts, **extra):
    return {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}], **extra}


@asynccontextmanager
async def worker(**settings):
    cfg = WorkerSettings(repository=SHIPPED, warmup=False, **settings)
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    manager = ModelManager(ModelRepository(SHIPPED), cfg, metrics, backend_factory=lambda v: FakeBackend(v))
    app = create_worker_app(cfg, manager, metrics, registry)
    await manager.start()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://worker", timeout=30
    ) as client:
        client.manager, client.registry = manager, registry
        yield client
    await manager.close()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_each_model_answers_what_its_own_endpoint_answers_tokenised_once():
    async def main():
        async with worker() as c:
            lens = {n: c.manager.get(n).max_seq_len for n in ("intent", "sentiment", "faq")}
            assert len(set(lens.values())) > 1  # the shared ids are cut per model
            single = {}
            for name in lens:
                r = await c.post(f"/v2/models/{name}/infer", json=body(TEXTS))
                assert r.status_code == 200, r.text
                single[name] = r.json()
            calls = []
            for name in lens:
                tok = c.manager.get(name).tokenizer
                original = tok.encode_ids
                tok.encode_ids = lambda texts, _o=original, _n=name: calls.append(_n) or _o(texts)
            shipped = str(c.manager.get("sentiment").number)  # the committed default's version, named
            models = [{"name": "intent"}, {"name": "sentiment", "version": shipped}, {"name": "faq"}]
            r = await c.post("/v2/multi/infer", json=body(TEXTS, models=models, id="t-1"))
            assert r.status_code == 200, r.text
            answer = r.json()
            assert answer["id"] == "t-1"
            assert [x["model_name"] for x in answer["results"]] == ["intent", "sentiment", "faq"]
            for got in answer["results"]:
                want = single[got["model_name"]]
                assert got["model_version"] == want["model_version"]
                assert got["outputs"] == want["outputs"]  # same ids, so the same outputs to the last digit
            assert calls == [max(lens, key=lens.get)]  # one vocabulary: tokenised once, by the longest
            count = c.registry.get_sample_value
            ok = {"model": "sentiment", "version": shipped}
            assert count("kefu_worker_request_success_total", ok) == 2.0

    run(main())


def test_one_model_failing_costs_only_its_part():
    async def main():
        async with worker() as c:
            models = [{"name": "intent", "version": "9"}, {"name": "sentiment"}, {"name": "nope"}]
            r = await c.post("/v2/multi/infer", json=body(["怎么退款"], models=models))
            assert r.status_code == 200, r.text
            intent, sentiment, nope = r.json()["results"]
            assert intent["status"] == 404 and "no version 9" in intent["error"]
            assert nope["status"] == 404 and nope["model_name"] == "nope"
            assert sentiment["model_name"] == "sentiment" and sentiment["outputs"]

    run(main())


@pytest.mark.parametrize(
    "payload, problem",
    [
        (body([""], models=[{"name": "intent"}]), "data[0] is empty"),
        (body(["你好"], models=[]), "models"),
        (body(["你好"], models=[{"name": "intent"}, {"name": "intent"}]), "at most once"),
        (body(["你好"]), "models"),
        ({"models": [{"name": "intent"}]}, "inputs"),
    ],
)
def test_a_bad_request_is_a_400_naming_the_problem(payload, problem):
    async def main():
        async with worker() as c:
            r = await c.post("/v2/multi/infer", json=payload)
            assert r.status_code == 400, r.text
            assert problem in r.json()["error"]

    run(main())


def test_the_extension_is_advertised():
    async def main():
        async with worker() as c:
            assert "multi_model_infer" in (await c.get("/v2")).json()["extensions"]

    run(main())
