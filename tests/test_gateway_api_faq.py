"""The knowledge base behind the gateway: the FAQ admin API mounted at /admin/faq, seeding an empty store,
calibrated thresholds per encoder version, and an encoder version change (re-index before serving again)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from fastapi.testclient import TestClient

from services.faq.domain import StoreUnavailable
from services.faq.store import InMemoryFaqStore, embed_entries
from services.faq.testing import DEMO_KB, load_demo_kb
from tests import demo_kb
from tests.gateway_app import Gateway, build, headers
from tests.gateway_fakes import EMBEDDER


class VersionedStore(InMemoryFaqStore):
    """An in-memory store that, like Milvus, records the encoder version its vectors came from."""

    def __init__(self, dim: int, embedder_version: str):
        super().__init__(dim)
        self.embedder_version = embedder_version

    def health(self):
        return {**super().health(), "embedder_version": self.embedder_version}


def demo(store):
    entries = load_demo_kb()
    store.upsert(entries, embed_entries(EMBEDDER, entries))
    return store


def test_admin_api_is_mounted_and_its_writes_are_searchable_at_once(tmp_path):
    app, fake, registry = build(tmp_path)
    with TestClient(app) as client:
        faq = {
            "faq_id": "faq-900",
            "question": "可以用数字人民币付款吗？",
            "answer": "支持，结算页选择数字人民币即可。",
            "category": "支付/账单",
            "alternatives": ["支持数字人民币吗"],
        }
        r = client.post("/admin/faq/faqs", json=faq, headers=headers())
        assert r.status_code == 201, r.text
        r = client.post(
            "/v1/chat", json={"session_id": "a", "text": "可以用数字人民币付款吗？"}, headers=headers()
        )
        assert r.json()["action"] == "answer" and r.json()["faq_hits"][0]["faq_id"] == "faq-900"
        assert client.get("/admin/faq/health", headers=headers()).json()["faqs"] == demo_kb.FAQS + 1
        r = client.post("/admin/faq/faqs", json={"faq_id": "x"}, headers=headers())
        assert r.status_code == 400 and set(r.json()["error"]) == {"code", "message", "request_id"}


def test_an_empty_store_is_seeded_from_the_seed_file(tmp_path):
    store = InMemoryFaqStore(32)
    app, fake, registry = build(tmp_path, store=store, faq_seed_file=DEMO_KB)
    with TestClient(app) as client:
        assert store.count() == demo_kb.FAQS
        assert TestClient(app.state.internal_app).get("/readyz").json()["knowledge_base"]["ready"] is True
        assert (
            Gateway(app, client, fake, registry, store).sample("kefu_faq_entries", kind="faqs")
            == demo_kb.FAQS
        )


def test_thresholds_come_from_the_encoder_versions_calibration(tmp_path):
    repo = tmp_path / "repo"
    (repo / "faq").mkdir(parents=True)
    calibration = {
        "answer": 0.91, "suggest": 0.72, "answer_precision": 0.9, "answer_coverage": 0.5, "suggest_precision": 0.8,
        "suggest_coverage": 0.7, "queries": 10, "unanswerable": 2, "encoder": "faq-v1", "calibrated_on": "test",
        "calibrated_at": "2024-06-01T00:00:00Z",
    }  # fmt: skip
    (repo / "faq" / "thresholds.json").write_text(json.dumps({"versions": {"1": calibration}}), "utf-8")
    app, *_ = build(tmp_path, model_repository=repo)
    with TestClient(app):
        th = TestClient(app.state.internal_app).get("/readyz").json()["knowledge_base"]["thresholds"]
        assert th == {"answer": 0.91, "suggest": 0.72, "source": "calibrated:faq-v1"}
    app, *_ = build(tmp_path, model_repository=tmp_path / "nowhere")
    with TestClient(app):
        th = TestClient(app.state.internal_app).get("/readyz").json()["knowledge_base"]["thresholds"]
        assert th == {"answer": 0.8, "suggest": 0.6, "source": "policy"}  # policy.yaml


class FakeReindexer:
    def __init__(self, store: VersionedStore):
        self.store, self.runs = store, []

    def __call__(self, embedder):
        def run(entries):
            self.runs.append((embedder.version, len(entries)))
            self.store.upsert(entries, embed_entries(embedder, entries, 16))
            self.store.embedder_version = embedder.version
            return {"faqs": len(entries)}

        return run


def test_a_collection_of_another_encoder_version_is_reindexed_before_serving(tmp_path):
    store = demo(VersionedStore(32, "faq-v0"))
    reindexer = FakeReindexer(store)
    app, fake, registry = build(tmp_path, store=store)
    app.state.kb._reindexer = reindexer
    with TestClient(app) as client:
        assert reindexer.runs == [("faq-v1", demo_kb.FAQS)]
        r = client.post("/v1/chat", json={"session_id": "a", "text": "下单后多久发货？"}, headers=headers())
        assert r.json()["action"] == "answer"


def test_without_reindex_a_mismatched_collection_keeps_faq_off(tmp_path):
    store = demo(VersionedStore(32, "faq-v0"))
    app, fake, registry = build(tmp_path, store=store, faq_reindex_on_mismatch=False)
    with TestClient(app) as client:
        kb = TestClient(app.state.internal_app).get("/readyz").json()["knowledge_base"]
        assert kb["ready"] is False and "re-index" in kb["error"]
        body = client.post(
            "/v1/chat", json={"session_id": "a", "text": "下单后多久发货？"}, headers=headers()
        ).json()
        assert body["degraded"] == ["faq_down"] and body["action"] == "clarify"


def test_a_new_encoder_version_is_not_searched_against_old_vectors(tmp_path):
    store = demo(VersionedStore(32, "faq-v1"))
    reindexer = FakeReindexer(store)
    app, fake, registry = build(tmp_path, store=store)
    app.state.kb._reindexer = reindexer
    with TestClient(app) as client:
        chat = lambda text: client.post(  # noqa: E731
            "/v1/chat", json={"session_id": "a", "text": text}, headers=headers()
        ).json()
        assert chat("下单后多久发货？")["action"] == "answer"
        fake.set_versions("faq", ["2"])
        asyncio.run(app.state.pool.refresh())
        body = chat("怎么查看物流信息？")
        assert body["degraded"] == [
            "faq_keywords_only"
        ]  # v2 vectors must not meet a v1 collection: BM25 only
        asyncio.run(app.state.kb.refresh())
        assert reindexer.runs == [("faq-v2", demo_kb.FAQS)]
        body = chat("怎么查看物流信息？")
        assert body["action"] == "answer" and body["model_versions"]["faq"] == "2"


def faq_search(gw: Gateway):
    return gw.client.post("/v1/faq/search", json={"text": "下单后多久发货？"}, headers=headers())


class FlakyStore(InMemoryFaqStore):
    """An in-memory store that can go down and come back, like a Milvus that is killed and restarted."""

    down = False

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailable("milvus search failed: Fail connecting to server on 127.0.0.1:19530")

    def search(self, *args, **kwargs):
        self._check()
        return super().search(*args, **kwargs)

    def count(self):
        self._check()
        return super().count()

    def probe(self):
        return "Fail connecting to server on 127.0.0.1:19530" if self.down else None


def test_readiness_follows_the_store_through_an_outage(tmp_path):
    """Issue 14.2: while the store is down /readyz says the knowledge base cannot serve (degraded, with the
    reason), and says ready again once it answers; searches and the admin API fail with 503 meanwhile."""
    store = demo(FlakyStore(32))
    app, fake, registry = build(tmp_path, store=store)
    gw = Gateway(app, TestClient(app), fake, registry, store)
    kb = app.state.kb
    with gw.client:
        ready = gw.internal.get("/readyz").json()
        assert ready["status"] == "ready" and ready["knowledge_base"]["ready"] is True
        assert faq_search(gw).status_code == 200

        store.down = True
        asyncio.run(kb.refresh())  # what the refresh loop does every refresh_interval_s
        ready = gw.internal.get("/readyz").json()
        assert ready["status"] == "degraded" and ready["knowledge_base"]["ready"] is False
        assert "Fail connecting" in ready["knowledge_base"]["error"]
        assert gw.client.get("/readyz").json() == {"status": "degraded"}
        assert gw.sample("kefu_faq_store_up") == 0
        assert faq_search(gw).status_code == 503
        r = gw.client.post("/admin/faq/search", json={"text": "发货"}, headers=headers())
        assert r.status_code == 503 and r.json()["error"]["code"] == "store_unavailable"

        store.down = False
        asyncio.run(kb.refresh())
        ready = gw.internal.get("/readyz").json()
        assert ready["status"] == "ready" and ready["knowledge_base"] == {
            **ready["knowledge_base"],
            "ready": True,
            "error": None,
        }
        assert gw.sample("kefu_faq_store_up") == 1


def test_a_failed_search_marks_the_store_down_until_one_succeeds(tmp_path):
    """Readiness does not wait for the next probe: a search that fails on the store says so at once, one that
    succeeds says the store is back."""
    store = demo(FlakyStore(32))
    app, fake, registry = build(tmp_path, store=store)
    gw = Gateway(app, TestClient(app), fake, registry, store)
    kb = app.state.kb
    kb.probe_ttl_s = 3600  # no background probe: only the searches speak
    with gw.client:
        store.down = True
        assert faq_search(gw).status_code == 503
        assert gw.internal.get("/readyz").json()["knowledge_base"]["ready"] is False
        store.down = False
        kb.breaker.record_success()  # skip the breaker's half-open wait
        assert faq_search(gw).status_code == 200
        assert gw.internal.get("/readyz").json()["knowledge_base"]["ready"] is True


def test_readme_documents_every_setting():
    from services.gateway.settings import GatewaySettings

    readme = (Path(__file__).resolve().parents[1] / "services" / "gateway" / "README.md").read_text("utf-8")
    for name, field in GatewaySettings.model_fields.items():
        assert field.description, name
        assert f"KEFU_GATEWAY_{name.upper()}" in readme, name
