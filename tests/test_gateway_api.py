"""Contract tests of the public API v1 against fake workers and the in-memory FAQ store: every action path,
sessions, the response body, Server-Timing, metrics, the cache and its invalidation on a version change."""

from __future__ import annotations

import asyncio

import pytest
from fastapi.testclient import TestClient

from services.gateway.core.policy import Thresholds
from tests.gateway_app import A, Gateway, build, headers
from tests.gateway_fakes import embed


@pytest.fixture
def gw(tmp_path):
    app, fake, registry = build(tmp_path)
    with TestClient(app) as client:
        yield Gateway(app, client, fake, registry, app.state.kb.store)


def set_thresholds(gw: Gateway, answer: float, suggest: float) -> None:
    gw.app.state.kb.thresholds = Thresholds(answer, suggest, "test")


def test_answer_with_the_faq_and_the_full_response_shape(gw):
    r = gw.chat("下单后多久发货？", user_id="u-1", channel="app")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["action"] == "answer" and body["handoff_reason"] is None
    assert body["faq_hits"][0]["faq_id"] == "faq-001" and body["faq_hits"][0]["score"] == pytest.approx(1.0)
    assert body["reply"] == body["faq_hits"][0]["answer"]
    assert body["intent"] == {"label": "物流查询", "confidence": pytest.approx(0.88)}
    assert body["sentiment"]["label"] == "positive" and body["sentiment"]["negative"] == pytest.approx(0.15)
    assert body["model_versions"] == {"intent": "1", "sentiment": "1", "faq": "1"}
    assert body["degraded"] == [] and body["session_id"] == "s-1"
    assert body["request_id"] == r.headers["X-Request-ID"]
    timing = r.headers["Server-Timing"]
    for name in ("total", "gateway", "intent", "sentiment", "faq_embed", "faq_store"):
        assert f"{name};dur=" in timing
    assert gw.sample("kefu_gateway_actions_total", action="answer") == 1
    assert gw.sample("kefu_gateway_requests_total", route="/v1/chat", status="200") == 1


def test_suggest_offers_up_to_three_faqs_in_the_band(gw):
    query = "发货以后快递要走几天才能收到"
    hits = gw.store.search(query, embed(query), 5, "hybrid")
    top = hits[0].cosine
    set_thresholds(gw, answer=top + 0.01, suggest=min(h.cosine for h in hits) - 0.01)
    body = gw.chat(query).json()
    assert body["action"] == "suggest" and len(body["faq_hits"]) == 3
    assert body["reply"].count("\n") == 3 and "1. " in body["reply"]


def test_clarify_on_low_intent_confidence(gw):
    set_thresholds(gw, 0.99, 0.98)
    body = gw.chat("嗯嗯").json()
    assert body["action"] == "clarify" and body["intent"]["label"] == "其他/闲聊"
    assert "具体描述" in body["reply"]


@pytest.mark.parametrize(
    "text,reason",
    [
        ("我要投诉你们的客服", "complaint"),
        ("帮我转人工", "requested_human"),
        ("东西太差了，气死我了", "negative_sentiment"),
    ],
)
def test_handoff_for_each_reason(gw, text, reason):
    body = gw.chat(text).json()
    assert body["action"] == "handoff" and body["handoff_reason"] == reason and "人工" in body["reply"]
    assert gw.sample("kefu_gateway_handoffs_total", reason=reason) == 1


def test_n_unresolved_turns_hand_over_and_the_session_keeps_slots(gw):
    set_thresholds(gw, 0.99, 0.98)
    first = gw.chat("嗯嗯 我的订单号 2024060112345", session_id="multi").json()
    assert first["action"] == "clarify" and first["slots"]["order_no"] == "2024060112345"
    assert gw.chat("嗯嗯", session_id="multi").json()["action"] == "clarify"
    third = gw.chat("嗯嗯", session_id="multi").json()
    assert (third["action"], third["handoff_reason"]) == ("handoff", "unresolved_turns")
    assert third["slots"]["order_no"] == "2024060112345"
    assert gw.chat("嗯嗯", session_id="other").json()["action"] == "clarify"  # sessions are separate
    assert gw.chat("嗯嗯", session_id="multi").json()["action"] == "clarify"  # a hand-over starts afresh


def test_an_answer_resets_the_unresolved_count(gw):
    set_thresholds(gw, 0.99, 0.98)
    gw.chat("嗯嗯", session_id="r")
    gw.chat("嗯嗯", session_id="r")
    assert gw.chat("下单后多久发货？", session_id="r").json()["action"] == "answer"
    assert gw.chat("嗯嗯", session_id="r").json()["action"] == "clarify"


def test_text_is_normalised_and_sensitive_words_masked_before_the_models(gw):
    gw.chat("下单后多久发货？　　你们是傻逼吗")
    sent = [
        texts
        for model, _, texts in gw.fake.replica(A).texts + gw.fake.replicas["http://127.0.0.2:18001"].texts
    ]
    assert sent and all("傻逼" not in t for batch in sent for t in batch)
    assert any("**" in t for batch in sent for t in batch)


def test_intent_and_sentiment_single_and_list(gw):
    r = gw.client.post("/v1/intent", json={"text": "我要投诉"}, headers=headers())
    assert r.status_code == 200 and r.json()["results"] == [
        {"label": "投诉", "confidence": pytest.approx(0.92)}
    ]
    assert r.json()["model_version"] == "1"
    r = gw.client.post("/v1/sentiment", json={"text": ["太差了", "挺好"]}, headers=headers())
    assert [x["label"] for x in r.json()["results"]] == ["negative", "positive"]


def test_lists_longer_than_the_models_batch_are_chunked(gw):
    gw.fake.max_batch_size = 3
    asyncio.run(gw.app.state.pool.refresh())
    texts = [f"快递{i}" for i in range(8)]
    r = gw.client.post("/v1/intent", json={"text": texts}, headers=headers())
    assert r.status_code == 200 and len(r.json()["results"]) == 8
    sizes = [
        len(t)
        for m, _, t in gw.fake.replica(A).texts + gw.fake.replicas["http://127.0.0.2:18001"].texts
        if m == "intent"
    ]
    assert max(sizes) <= 3 and sum(sizes) == 8


def test_faq_search_single_and_list(gw):
    r = gw.client.post("/v1/faq/search", json={"text": "下单后多久发货？", "top_k": 2}, headers=headers())
    assert r.status_code == 200
    hits = r.json()["results"][0]["hits"]
    assert len(hits) == 2 and hits[0]["faq_id"] == "faq-001"
    r = gw.client.post(
        "/v1/faq/search", json={"text": ["下单后多久发货？", "怎么查看物流信息？"]}, headers=headers()
    )
    assert [res["hits"][0]["faq_id"] for res in r.json()["results"]] == ["faq-001", "faq-003"]


def test_cache_serves_repeats_without_calling_the_workers(gw):
    for _ in range(2):
        r = gw.client.post("/v1/intent", json={"text": "快递到哪了"}, headers=headers())
        assert r.json()["results"][0]["label"] == "物流查询"
    calls = sum(rep.calls[("intent", "infer")] for rep in gw.fake.replicas.values())
    assert calls == 1
    assert gw.sample("kefu_gateway_cache_requests_total", result="hit") == 1
    assert gw.sample("kefu_gateway_cache_requests_total", result="miss") == 1


def test_a_model_version_change_never_serves_the_old_versions_cached_answer(gw):
    text = "快递到哪了"
    assert gw.chat(text).json()["intent"]["label"] == "物流查询"
    assert gw.chat(text).json()["intent"]["label"] == "物流查询"  # cached
    gw.fake.set_versions("intent", ["2"])  # hot reload on the workers: v2 answers differently
    gw.fake.override[("intent", "2")] = "促销活动"
    asyncio.run(gw.app.state.pool.refresh())
    body = gw.chat(text).json()
    assert body["intent"]["label"] == "促销活动" and body["model_versions"]["intent"] == "2"
    r = gw.client.post("/v1/intent", json={"text": text}, headers=headers())
    assert r.json()["model_version"] == "2" and r.json()["results"][0]["label"] == "促销活动"


def test_a_retired_version_found_on_a_miss_switches_to_the_new_one(gw):
    gw.fake.set_versions("sentiment", ["2"])  # the gateway still pins v1 (no refresh yet)
    r = gw.client.post("/v1/sentiment", json={"text": "还不错"}, headers=headers())
    assert r.status_code == 200 and r.json()["model_version"] == "2"


def test_healthz_readyz_metrics(gw):
    assert gw.client.get("/healthz").json() == {"status": "ok"}
    assert gw.internal.get("/healthz").json() == {"status": "ok"}
    ready = gw.internal.get("/readyz")  # the detailed answer is on the internal port
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert ready.json()["knowledge_base"]["encoder"] == "faq-v1"
    gw.chat("我的手机号是13812345678，快递到哪了")
    text = gw.internal.get("/metrics").text
    assert "kefu_gateway_request_duration_seconds_bucket" in text and "kefu_faq_store_up 1.0" in text
    assert "13812345678" not in text and "快递到哪了" not in text  # no user text in labels
    assert 'kefu_gateway_model_requests_total{model="intent",outcome="ok",role="stable",version="1"}' in text
