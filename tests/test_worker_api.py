"""Worker contract tests: Open Inference Protocol shapes and errors, admission, deadlines, failure isolation,
readiness gating, hot reload under load, metrics. Fake backend unless the engine matters."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from contextlib import asynccontextmanager

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from services.runtime.repository import ModelRepository, write_manifest
from services.worker.app import create_worker_app
from services.worker.backends import FakeBackend, PaddleBackend
from services.worker.manager import ModelManager
from services.worker.metrics import METRIC_NAMES, WorkerMetrics
from services.worker.settings import WorkerSettings

pytestmark = pytest.mark.slow  # needs the exported tiny models


def infer_body(texts, datatype="BYTES", **extra):
    return {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": datatype, "data": texts}], **extra}


@asynccontextmanager
async def worker(repo, backend_factory=None, start=True, **settings):
    settings.setdefault("warmup", False)
    cfg = WorkerSettings(repository=repo, **settings)
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    if backend_factory == "default":  # the production path: Paddle in engine processes
        factory = None
    else:
        factory = backend_factory or (lambda v: FakeBackend(v))
    manager = ModelManager(ModelRepository(repo), cfg, metrics, backend_factory=factory)
    app = create_worker_app(cfg, manager, metrics, registry)
    if start:
        await manager.start()
    transport = httpx.ASGITransport(app=app)
    internal_url = f"http://worker:{cfg.internal_port}"  # PortDispatch picks the internal app by port
    async with (
        httpx.AsyncClient(transport=transport, base_url="http://worker", timeout=30) as client,
        httpx.AsyncClient(transport=transport, base_url=internal_url, timeout=30) as internal,
    ):
        client.manager, client.internal = manager, internal
        yield client
    await manager.close()


CONTROL_TOKEN = "test-control-token-0123456789"
CONTROL = {"model_control_mode": "explicit", "model_control_token": CONTROL_TOKEN}
AUTH = {"Authorization": f"Bearer {CONTROL_TOKEN}"}


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


# ---- protocol shapes ---------------------------------------------------------------------------------------


def test_health_metadata_and_classifier_shapes(model_repo, tiny_data):
    async def main():
        async with worker(model_repo) as c:
            live = await c.get("/v2/health/live")
            ready = await c.get("/v2/health/ready")
            meta = await c.get("/v2/models/intent")
            r = await c.post(
                "/v2/models/intent/infer", json=infer_body(["快递到哪了", "我要退款"], id="req-1")
            )
            rv = await c.post("/v2/models/intent/versions/1/infer", json=infer_body(["在吗"]))
            only_label = await c.post(
                "/v2/models/intent/infer", json=infer_body(["在吗"], outputs=[{"name": "label"}])
            )
            model_ready = await c.get("/v2/models/intent/ready")
            return live, ready, meta, r, rv, only_label, model_ready

    live, ready, meta, r, rv, only_label, model_ready = run(main())
    assert live.json() == {"live": True} and ready.status_code == 200 and ready.json() == {"ready": True}
    assert model_ready.json() == {"name": "intent", "ready": True}
    m = meta.json()
    labels = tiny_data["labels"]
    assert m["name"] == "intent" and m["versions"] == ["1"]
    assert m["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert {"name": "probs", "datatype": "FP32", "shape": [-1, len(labels)]} in m["outputs"]
    assert m["parameters"]["labels"] == labels
    body = r.json()
    assert r.status_code == 200 and body["model_name"] == "intent" and body["model_version"] == "1"
    assert body["id"] == "req-1"
    probs = next(o for o in body["outputs"] if o["name"] == "probs")
    label = next(o for o in body["outputs"] if o["name"] == "label")
    assert probs["shape"] == [2, len(labels)] and len(probs["data"]) == 2 * len(labels)
    assert np.allclose(np.array(probs["data"]).reshape(2, -1).sum(axis=1), 1.0, atol=1e-4)
    assert label["shape"] == [2] and all(x in labels for x in label["data"])
    assert rv.status_code == 200
    assert [o["name"] for o in only_label.json()["outputs"]] == ["label"]


def test_embedding_shapes(model_repo):
    async def main():
        async with worker(model_repo) as c:
            return await c.post("/v2/models/faq/infer", json=infer_body(["怎么退钱", "如何申请退款", "发票"]))

    r = run(main())
    out = r.json()["outputs"]
    assert [o["name"] for o in out] == ["embedding"]
    emb = np.array(out[0]["data"]).reshape(out[0]["shape"])
    assert emb.shape[0] == 3 and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)


# ---- errors ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path,body,status,message",
    [
        ("/v2/models/nope/infer", infer_body(["hi"]), 404, "model 'nope' is not loaded"),
        ("/v2/models/intent/versions/9/infer", infer_body(["hi"]), 404, "no version 9"),
        ("/v2/models/intent/versions/x/infer", infer_body(["hi"]), 400, "version must be a positive integer"),
        (
            "/v2/models/intent/infer",
            infer_body(["hi"], datatype="FP32"),
            400,
            "datatype must be BYTES, got FP32",
        ),
        (
            "/v2/models/intent/infer",
            {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES"}]},
            400,
            "inputs.0.data: Field required",
        ),
        (
            "/v2/models/intent/infer",
            {"inputs": [{"name": "text", "shape": [1], "datatype": "STR", "data": ["a"]}]},
            400,
            "inputs.0.datatype",
        ),
        ("/v2/models/intent/infer", {"inputs": []}, 400, "inputs: List should have at least 1 item"),
        (
            "/v2/models/intent/infer",
            {"inputs": [{"name": "txt", "shape": [1], "datatype": "BYTES", "data": ["a"]}]},
            400,
            "exactly one input named 'text'",
        ),
        (
            "/v2/models/intent/infer",
            {"inputs": [{"name": "text", "shape": [3], "datatype": "BYTES", "data": ["a"]}]},
            400,
            "shape [3] does not match 1 data elements",
        ),
        ("/v2/models/intent/infer", infer_body(["ok", "  "]), 400, "data[1] is empty"),
        ("/v2/models/intent/infer", infer_body(["ok", 5]), 400, "data[1] must be a UTF-8 string"),
        (
            "/v2/models/intent/infer",
            infer_body(["ok"], outputs=[{"name": "logits"}]),
            400,
            "unknown output(s) ['logits']",
        ),
        ("/v2/models/intent/infer", infer_body(["问"] * 17), 413, "17 texts exceed max_batch_size 16"),
    ],
)
def test_errors_are_4xx_naming_the_problem(model_repo, path, body, status, message):
    async def main():
        async with worker(model_repo) as c:
            return await c.post(path, json=body)

    r = run(main())
    assert r.status_code == status, r.text
    assert message in r.json()["error"]


def test_non_json_and_oversized_bodies(model_repo):
    async def main():
        async with worker(model_repo, max_body_bytes=2048) as c:
            bad = await c.post(
                "/v2/models/intent/infer", content=b"{not json", headers={"content-type": "application/json"}
            )
            big = await c.post("/v2/models/intent/infer", json=infer_body(["长" * 1500]))
            return bad, big

    bad, big = run(main())
    assert bad.status_code == 400 and "invalid inference request" in bad.json()["error"]
    assert big.status_code == 413 and "over the limit of 2048 bytes" in big.json()["error"]


def test_queue_full_answers_429_with_retry_after_at_once(model_repo):
    async def main():
        factory = lambda v: FakeBackend(v, delay_s=0.3)  # noqa: E731
        async with worker(model_repo, factory, queue_capacity=2, max_batch_size=1, max_queue_delay_ms=0) as c:
            busy = [asyncio.create_task(c.post("/v2/models/intent/infer", json=infer_body(["问题0"])))]
            await asyncio.sleep(0.05)  # the first is running
            busy += [
                asyncio.create_task(c.post("/v2/models/intent/infer", json=infer_body([f"问题{i}"])))
                for i in (1, 2)
            ]
            await asyncio.sleep(0.05)  # two waiting: the queue is full
            t0 = time.perf_counter()
            refused = await c.post("/v2/models/intent/infer", json=infer_body(["再来一个"]))
            elapsed = time.perf_counter() - t0
            done = await asyncio.gather(*busy)
            return refused, elapsed, done

    refused, elapsed, done = run(main())
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert "queue full" in refused.json()["error"]
    assert elapsed < 0.05
    assert [r.status_code for r in done] == [200, 200, 200]  # nothing already queued was lost


def test_deadline_expiry_is_504(model_repo):
    async def main():
        factory = lambda v: FakeBackend(v, delay_s=0.3)  # noqa: E731
        async with worker(
            model_repo, factory, request_timeout_ms=100, max_batch_size=1, max_queue_delay_ms=0
        ) as c:
            first = asyncio.create_task(c.post("/v2/models/intent/infer", json=infer_body(["先到"])))
            await asyncio.sleep(0.02)
            late = await c.post("/v2/models/intent/infer", json=infer_body(["后到"]))
            return late, await first

    late, first = run(main())
    assert late.status_code == 504 and "deadline" in late.json()["error"]
    assert first.status_code == 504  # its batch outlived its own 100 ms deadline too


def test_a_failing_batch_fails_only_its_requests(model_repo):
    poison = {}

    def fail_when(ids):
        return poison.get("id") is not None and (ids == poison["id"]).any()

    async def main():
        async with worker(
            model_repo, lambda v: FakeBackend(v, fail_when=fail_when), max_queue_delay_ms=0
        ) as c:
            poison["id"] = c.manager.get("intent").tokenizer.encode_ids(["毒"])[0][1]
            bad = await c.post("/v2/models/intent/infer", json=infer_body(["毒"]))
            good = await asyncio.gather(
                *(c.post("/v2/models/intent/infer", json=infer_body([f"好{i}"])) for i in range(5))
            )
            return bad, good

    bad, good = run(main())
    assert bad.status_code == 500 and "injected backend failure" in bad.json()["error"]
    assert all(r.status_code == 200 for r in good)


# ---- readiness, reload, metrics ----------------------------------------------------------------------------


class SlowWarmBackend(FakeBackend):
    def infer(self, input_ids):
        time.sleep(0.02)
        return super().infer(input_ids)


def test_readiness_is_false_until_warm_up_ends(model_repo):
    async def main():
        async with worker(
            model_repo, lambda v: SlowWarmBackend(v), start=False, warmup=True, models="intent"
        ) as c:
            starting = asyncio.create_task(c.manager.start())
            await asyncio.sleep(0.05)
            during = (
                await c.get("/v2/health/ready"),
                await c.get("/v2/models/intent/ready"),
                await c.post("/v2/models/intent/infer", json=infer_body(["在吗"])),
            )
            await starting
            after = (
                await c.get("/v2/health/ready"),
                await c.post("/v2/models/intent/infer", json=infer_body(["在吗"])),
            )
            return during, after

    (ready, model_ready, early), (ready_after, infer_after) = run(main())
    assert ready.status_code == 503 and ready.json() == {"ready": False}
    assert model_ready.status_code == 503
    assert early.status_code == 503 and early.headers["retry-after"] == "1"
    assert ready_after.status_code == 200 and infer_after.status_code == 200


def test_hot_reload_under_concurrent_load_fails_no_request(model_repo, tmp_path):
    """Real Paddle engine: v2 is loaded, warmed and swapped in while clients hammer the model."""
    repo = tmp_path / "repo"
    shutil.copytree(model_repo, repo)

    async def main():
        async with worker(
            repo, "default", warmup=True, models="intent", max_queue_delay_ms=1, **CONTROL
        ) as c:
            stop = asyncio.Event()
            results = []

            async def client(i):
                n = 0
                while not stop.is_set():
                    r = await c.post(
                        "/v2/models/intent/infer", json=infer_body([f"第{i}位顾客的第{n}个问题"])
                    )
                    results.append((r.status_code, r.json().get("model_version")))
                    n += 1

            clients = [asyncio.create_task(client(i)) for i in range(8)]
            await asyncio.sleep(0.3)
            shutil.copytree(repo / "intent" / "1", repo / "intent" / "2")  # a new version appears on disk
            write_manifest(repo / "intent" / "2")
            loaded = await c.post("/v2/repository/models/intent/load", headers=AUTH)
            await asyncio.sleep(0.3)
            stop.set()
            await asyncio.gather(*clients)
            meta = await c.get("/v2/models/intent")
            return loaded, results, meta

    loaded, results, meta = run(main())
    assert loaded.status_code == 200 and loaded.json()["versions"] == ["2"]
    codes = {code for code, _ in results}
    assert codes == {200}, f"failed requests during reload: {[r for r in results if r[0] != 200][:5]}"
    versions = [v for _, v in results]
    assert "1" in versions and versions[-1] == "2"
    assert meta.json()["versions"] == ["2"]
    assert meta.json()["platform"] == "paddle_inference/paddle/process"


def test_failed_reload_keeps_the_old_version_serving(model_repo, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(model_repo, repo)

    async def main():
        async with worker(repo, models="intent", **CONTROL) as c:
            shutil.copytree(repo / "intent" / "1", repo / "intent" / "2")  # no fresh manifest: files tampered
            (repo / "intent" / "2" / "labels.txt").write_text("x\n", encoding="utf-8")
            failed = await c.post("/v2/repository/models/intent/load", headers=AUTH)
            still = await c.post("/v2/models/intent/infer", json=infer_body(["在吗"]))
            unloaded = await c.post("/v2/repository/models/intent/unload", headers=AUTH)
            gone = await c.post("/v2/models/intent/infer", json=infer_body(["在吗"]))
            index = await c.post("/v2/repository/index")
            return failed, still, unloaded, gone, index

    failed, still, unloaded, gone, index = run(main())
    assert failed.status_code == 400 and "labels.txt has sha256" in failed.json()["error"]
    assert still.status_code == 200 and still.json()["model_version"] == "1"
    assert unloaded.status_code == 200 and gone.status_code == 404
    assert {"name": "intent", "versions": [], "state": "UNAVAILABLE"} in index.json()


class RecordingPaddle(PaddleBackend):
    """The real engine, recording the rows of every batch it runs; while `gate` is armed, a batch waits for it
    in the engine thread (so the test decides when the engine is free again, not a clock)."""

    def __init__(self, version):
        super().__init__(version)
        self.sizes: list[int] = []
        self.gate = threading.Event()
        self.gate.set()

    def infer(self, input_ids):
        self.sizes.append(int(input_ids.shape[0]))
        assert self.gate.wait(30), "the test never released the engine"
        return super().infer(input_ids)

    def health(self) -> None:  # the readiness probe is no batch of ours
        PaddleBackend.infer(self, np.array([[1, 2]], dtype=np.int64))


def test_batched_answers_equal_single_answers_on_the_real_engine(model_repo):
    texts = [
        "在吗",
        "我的快递三天了还没到，订单号2023112345678",
        "退款",
        "这个商品有没有优惠券可以用啊",
        "人工",
    ]
    engines: list[RecordingPaddle] = []

    def factory(version):
        engines.append(RecordingPaddle(version))
        return engines[-1]

    async def main():
        async with worker(model_repo, factory, max_queue_delay_ms=20) as c:
            intent = c.manager.get("intent")
            engine = next(e for e in engines if e is intent.backend)
            alone = [await c.post("/v2/models/intent/infer", json=infer_body([t])) for t in texts]
            assert engine.sizes == [1] * len(texts)
            # hold the engine on the first batch until every other text waits in the queue behind it: the
            # rest must then go through as one batch
            engine.sizes.clear()
            engine.gate.clear()
            together = asyncio.gather(
                *(c.post("/v2/models/intent/infer", json=infer_body([t])) for t in texts)
            )
            for _ in range(3000):
                if engine.sizes and engine.sizes[0] + intent.batcher.depth == len(texts):
                    break
                await asyncio.sleep(0.01)
            assert engine.sizes and engine.sizes[0] + intent.batcher.depth == len(texts), (
                engine.sizes,
                intent.batcher.depth,
            )
            engine.gate.set()
            return alone, await together, engine.sizes

    alone, together, sizes = run(main())
    assert sum(sizes) == len(texts) and max(sizes) > 1, sizes  # a real batch formed
    for a, b in zip(alone, together, strict=True):
        assert a.status_code == b.status_code == 200
        np.testing.assert_allclose(a.json()["outputs"][0]["data"], b.json()["outputs"][0]["data"], atol=1e-5)


def test_metrics_use_the_documented_names(model_repo):
    async def main():
        async with worker(model_repo) as c:
            await c.post("/v2/models/intent/infer", json=infer_body(["在吗", "退款"]))
            await c.post("/v2/models/intent/infer", json=infer_body(["x"], datatype="INT64"))
            return (await c.internal.get("/metrics")).text, (await c.get("/metrics")).status_code

    text, public_status = run(main())
    assert public_status == 404  # metrics are on the internal port only
    for name in METRIC_NAMES:
        assert name in text, name
    assert 'kefu_worker_request_success_total{model="intent",version="1"} 1.0' in text
    assert 'kefu_worker_request_failure_total{model="intent",version="1"} 1.0' in text
    assert 'kefu_worker_batch_size_bucket{le="2.0",model="intent",version="1"}' in text
    families = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line.startswith("kefu_")}
    assert all(n.startswith("kefu_worker_") for n in families)
    assert "在吗" not in text  # no user text in metrics


def test_a_request_that_does_not_fit_is_refused_whole(model_repo):
    async def main():
        factory = lambda v: FakeBackend(v, delay_s=0.2)  # noqa: E731
        async with worker(model_repo, factory, queue_capacity=4, max_batch_size=8, max_queue_delay_ms=0) as c:
            running = asyncio.create_task(c.post("/v2/models/intent/infer", json=infer_body(["先来的"])))
            await asyncio.sleep(0.05)
            refused = await c.post("/v2/models/intent/infer", json=infer_body([f"问{i}" for i in range(5)]))
            depth_after = c.manager.get("intent").batcher.depth
            fits = await c.post("/v2/models/intent/infer", json=infer_body([f"问{i}" for i in range(4)]))
            return refused, depth_after, fits, await running

    refused, depth_after, fits, running = run(main())
    assert refused.status_code == 429 and "queue full (0 of 4 waiting)" in refused.json()["error"]
    assert depth_after == 0  # none of the refused request's texts were left queued
    assert fits.status_code == 200 and running.status_code == 200
