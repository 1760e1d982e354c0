"""FAQ search falls back to keywords while the encoder is down (issue 14 item 6): the store still answers by
BM25 alone, chat answers or suggests from it with thresholds of its own (`faq.keywords_answer` /
`faq.keywords_suggest`) and says so (`degraded: ["faq_keywords_only"]`, `kefu_gateway_degraded_total`);
`/v1/faq/search` answers keyword hits (model_version `keywords`). Contract tests: the real app, fake workers,
the in-memory store."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from services.faq.domain import StoreUnavailable
from services.gateway.core.policy import Decision, Policy, Signals, Thresholds, decide
from tests.gateway_app import build, headers
from tests.gateway_fakes import demo_store


@pytest.fixture
def gw(tmp_path):
    app, fake, registry = build(tmp_path)
    with TestClient(app) as client:
        fake.down_models.add("faq")  # the encoder goes down after the knowledge base was prepared
        yield client, fake, registry


def chat(client: TestClient, text: str, session: str = "kw-1") -> dict:
    r = client.post("/v1/chat", json={"session_id": session, "text": text}, headers=headers())
    assert r.status_code == 200, r.text
    return r.json()


def test_chat_answers_from_keywords_while_the_encoder_is_down(gw):
    client, _, registry = gw
    body = chat(client, "下单后多久发货？")
    assert body["degraded"] == ["faq_keywords_only"]
    assert body["action"] == "answer" and body["faq_hits"][0]["faq_id"] == "faq-001"
    assert "faq" not in body["model_versions"]  # no encoder answered
    assert registry.get_sample_value("kefu_gateway_degraded_total", {"mode": "faq_keywords_only"}) == 1
    assert registry.get_sample_value("kefu_gateway_degraded_total", {"mode": "faq_down"}) is None


def test_keyword_hits_are_held_to_the_keyword_thresholds(gw):
    """A loose keyword overlap is not answered: the keyword thresholds are stricter than the cosine ones."""
    client, _, _ = gw
    body = chat(client, "我想问一下发货", session="kw-2")
    assert body["degraded"] == ["faq_keywords_only"] and body["action"] != "answer", body


def test_faq_search_answers_keyword_hits_while_the_encoder_is_down(gw):
    client, _, _ = gw
    r = client.post("/v1/faq/search", json={"text": "能不能发顺丰"}, headers=headers())
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == "keywords"
    assert body["results"][0]["hits"][0]["faq_id"] == "faq-004"


def broken_search(*args, **kwargs):
    raise StoreUnavailable("milvus search failed: connection refused")


def test_encoder_and_store_down_is_faq_down(tmp_path):
    store = demo_store()
    app, fake, _ = build(tmp_path, store=store)
    with TestClient(app) as client:
        fake.down_models.add("faq")
        store.search = broken_search  # the store fails too
        body = chat(client, "下单后多久发货？")
        assert body["degraded"] == ["faq_down"] and body["action"] in {"clarify", "handoff"}


def test_decide_uses_the_keyword_thresholds_given():
    from services.faq.domain import FaqHit

    hit = FaqHit(
        faq_id="faq-1", question="Q", answer="A", category="物流查询", matched_text="Q",
        matched_standard=True, score=0.9, source="bm25", bm25=3.0,
    )  # fmt: skip
    policy = Policy()
    signals = Signals(None, None, [hit], 0, "q")
    keywords = Thresholds.keywords(policy)
    assert keywords.answer == policy.faq.keywords_answer and keywords.source == "keywords"
    assert decide(policy, Thresholds(0.8, 0.6, "policy"), signals).action == "answer"  # cosine thresholds
    d: Decision = decide(policy, keywords, signals)
    assert d.action == "clarify"  # 0.9 is under the keyword suggest threshold (0.95)
    with pytest.raises(ValueError, match="keywords_suggest"):
        Policy.model_validate({"faq": {"keywords_answer": 0.5, "keywords_suggest": 0.6}})


def test_every_model_down_the_knowledge_base_still_answers_by_keywords(tmp_path):
    from tests.gateway_app import A, B

    app, fake, _ = build(tmp_path)
    with TestClient(app) as client:
        fake.replica(A).mode = fake.replica(B).mode = "down"
        body = chat(client, "下单后多久发货？")
        assert body["action"] == "answer" and body["faq_hits"][0]["faq_id"] == "faq-001"
        assert sorted(body["degraded"]) == ["faq_keywords_only", "intent_down", "sentiment_down"]
        assert body["model_versions"] == {}
