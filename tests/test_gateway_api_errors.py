"""Contract tests of the gateway's failure paths: authentication and scopes, rate limits, input limits, the
uniform error body, retries to another replica, breakers, and each degradation mode."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.faq.domain import StoreUnavailable
from services.faq.store import InMemoryFaqStore
from tests import demo_kb
from tests.gateway_app import A, B, Gateway, build, headers
from tests.gateway_fakes import DEMO_KEY, demo_store


@pytest.fixture
def gw(tmp_path):
    app, fake, registry = build(tmp_path)
    with TestClient(app) as client:
        yield Gateway(app, client, fake, registry, app.state.kb.store)


def assert_error(r, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "request_id"}
    assert body["error"]["code"] == code and body["error"]["request_id"] == r.headers["X-Request-ID"]
    return body["error"]


# ── authentication, scopes, rate limits ─────────────────────────────────────────────────────────────


def test_missing_and_invalid_credentials_are_401(gw):
    assert_error(gw.client.post("/v1/chat", json={"session_id": "s", "text": "你好"}), 401, "unauthorized")
    assert_error(gw.chat("你好", key="not-a-key"), 401, "unauthorized")
    r = gw.client.post("/v1/intent", json={"text": "你好"}, headers={"Authorization": f"Bearer {DEMO_KEY}"})
    assert r.status_code == 200  # Bearer works as well as X-API-Key


def test_scopes(gw):
    assert_error(gw.chat("你好", key="admin-only-key-0001"), 403, "forbidden")
    assert gw.chat("你好", key="chat-only-key-0001").status_code == 200
    r = gw.client.get("/admin/faq/faqs", headers=headers("chat-only-key-0001"))
    assert_error(r, 403, "forbidden")
    r = gw.client.get("/admin/faq/faqs?limit=2", headers=headers("admin-only-key-0001"))
    assert r.status_code == 200 and r.json()["total"] == demo_kb.FAQS
    assert_error(gw.client.get("/admin/faq/faqs"), 401, "unauthorized")


def test_rate_limit_429_with_retry_after(gw):
    assert gw.chat("你好", key="slow-key-0001").status_code == 200
    r = gw.chat("你好", key="slow-key-0001")
    assert_error(r, 429, "rate_limited")
    assert int(r.headers["Retry-After"]) >= 1
    assert gw.sample("kefu_gateway_rate_limited_total", tenant="slow") == 1


# ── input limits: one text and a list fail the same way ─────────────────────────────────────────────


@pytest.mark.parametrize("route", ["/v1/intent", "/v1/sentiment", "/v1/faq/search"])
def test_single_and_list_fail_the_same_way(gw, route):
    long = "很" * 65
    one = assert_error(gw.client.post(route, json={"text": long}, headers=headers()), 400, "text_too_long")
    many = assert_error(
        gw.client.post(route, json={"text": ["好", long]}, headers=headers()), 400, "text_too_long"
    )
    assert "[0]" in one["message"] and "[1]" in many["message"]
    assert_error(gw.client.post(route, json={"text": "   "}, headers=headers()), 400, "empty_text")
    assert_error(gw.client.post(route, json={"text": ["好", " "]}, headers=headers()), 400, "empty_text")
    assert_error(gw.client.post(route, json={"text": ["好"] * 9}, headers=headers()), 400, "too_many_texts")
    assert_error(gw.client.post(route, json={"text": []}, headers=headers()), 400, "no_texts")


def test_malformed_requests_are_400_naming_the_field(gw):
    r = gw.client.post(
        "/v1/chat", content=b"{not json", headers={**headers(), "content-type": "application/json"}
    )
    assert r.status_code == 400 and r.json()["error"]["request_id"]
    err = assert_error(
        gw.client.post("/v1/chat", json={"text": "你好"}, headers=headers()), 400, "invalid_request"
    )
    assert "session_id" in err["message"]
    err = assert_error(gw.chat("你好", session_id="bad id!"), 400, "invalid_request")
    assert "session_id" in err["message"]
    err = assert_error(
        gw.client.post("/v1/intent", json={"text": 5}, headers=headers()), 400, "invalid_request"
    )
    assert "text" in err["message"]
    r = gw.client.post("/v1/faq/search", json={"text": "运费", "top_k": 0}, headers=headers())
    assert "top_k" in assert_error(r, 400, "invalid_request")["message"]
    r = gw.client.post("/v1/intent", json={"text": "好", "extra": 1}, headers=headers())
    assert_error(r, 400, "invalid_request")


def test_body_too_large_is_413(gw):
    r = gw.client.post("/v1/chat", json={"session_id": "s", "text": "很" * 5000}, headers=headers())
    assert_error(r, 413, "body_too_large")


def test_unknown_route_and_method(gw):
    assert_error(gw.client.get("/v1/nothing", headers=headers()), 404, "not_found")
    assert_error(gw.client.get("/v1/chat", headers=headers()), 405, "method_not_allowed")


# ── retries, breakers ───────────────────────────────────────────────────────────────────────────────


def test_a_dead_replica_is_retried_on_the_other_and_breaks_open(gw):
    gw.fake.replica(A).mode = "down"
    for i in range(8):
        r = gw.chat(f"下单后多久发货？{i}", session_id=f"s{i}")  # distinct texts: no cache hits
        assert r.status_code == 200 and r.json()["degraded"] == []
    assert gw.sample("kefu_gateway_upstream_retries_total", upstream="intent") >= 1
    assert gw.sample("kefu_gateway_circuit_state", upstream="intent@127.0.0.1:18001") == 2
    status = gw.internal.get("/readyz").json()["upstreams"]["intent"]["replicas"]
    assert {r["upstream"]: r["circuit"] for r in status}["intent@127.0.0.1:18001"] == "open"


# ── degradation ─────────────────────────────────────────────────────────────────────────────────────


def test_faq_encoder_down_intent_and_sentiment_still_decide(gw):
    """The encoder down, the store searches by keywords alone (issue 14 item 6; more in
    tests/test_gateway_keywords_fallback.py); with the store down too, the knowledge base is gone."""
    gw.fake.down_models.add("faq")
    body = gw.chat("下单后多久发货？").json()
    assert body["action"] == "answer" and body["degraded"] == ["faq_keywords_only"]
    gw.store.search = _broken_search
    body = gw.chat("下单后多久发货？").json()
    assert body["action"] == "clarify" and body["degraded"] == ["faq_down"] and body["faq_hits"] == []
    body = gw.chat("我要投诉").json()
    assert body["action"] == "handoff" and body["degraded"] == ["faq_down"]
    assert gw.sample("kefu_gateway_degraded_total", mode="faq_down") == 2
    r = gw.client.post("/v1/faq/search", json={"text": "运费"}, headers=headers())
    assert_error(r, 503, "upstream_unavailable")
    assert r.headers["Retry-After"] == "5"


def _broken_search(*args, **kwargs):
    raise StoreUnavailable("milvus search failed: connection refused")


class BrokenStore(InMemoryFaqStore):
    def search(self, *a, **k):
        raise StoreUnavailable("milvus search failed: connection refused")


def test_faq_store_down_degrades_like_the_encoder(tmp_path):
    store = BrokenStore(32)
    for entry, vec in zip(*_demo(), strict=True):
        store.upsert([entry], [vec])
    app, fake, registry = build(tmp_path, store=store)
    with TestClient(app) as client:
        gw = Gateway(app, client, fake, registry, store)
        body = gw.chat("下单后多久发货？").json()
        assert body["action"] == "clarify" and body["degraded"] == ["faq_down"]
        assert (
            gw.sample("kefu_gateway_upstream_duration_seconds_count", upstream="faq_store", outcome="error")
            == 1
        )
        r = client.post("/v1/faq/search", json={"text": "运费"}, headers=headers())
        assert_error(r, 503, "faq_unavailable")


def _demo():
    from services.faq.store import embed_entries
    from services.faq.testing import load_demo_kb
    from tests.gateway_fakes import EMBEDDER

    entries = load_demo_kb()
    return entries, embed_entries(EMBEDDER, entries)


def test_intent_down_is_faq_only(gw):
    gw.fake.down_models.add("intent")
    body = gw.chat("下单后多久发货？").json()
    assert body["action"] == "answer" and body["intent"] is None and body["degraded"] == ["intent_down"]
    assert "intent" not in body["model_versions"]
    r = gw.client.post("/v1/intent", json={"text": "你好"}, headers=headers())
    assert_error(r, 503, "upstream_unavailable")
    assert r.headers["Retry-After"] == "5"


def test_sentiment_down_skips_the_sentiment_handoff(gw):
    gw.fake.down_models.add("sentiment")
    body = gw.chat("下单后多久发货？太差了").json()
    assert body["sentiment"] is None and body["degraded"] == ["sentiment_down"]
    assert body["action"] != "handoff"


def test_every_upstream_down_is_503_with_retry_after(gw):
    gw.fake.replica(A).mode = gw.fake.replica(B).mode = "down"
    gw.store.search = _broken_search  # (with the store up, chat answers from keywords alone)
    r = gw.chat("你好")
    assert_error(r, 503, "upstreams_unavailable")
    assert r.headers["Retry-After"] == "5"
    assert gw.client.get("/readyz").status_code == 200  # not probed yet: the probe decides readiness


def test_readyz_is_503_when_every_upstream_is_down(gw):
    gw.fake.replica(A).mode = gw.fake.replica(B).mode = "down"
    asyncio.run(gw.app.state.pool.refresh())
    r = gw.client.get("/readyz")
    assert r.status_code == 503 and r.json()["status"] == "unavailable"
    gw.fake.replica(B).mode = "ok"
    asyncio.run(gw.app.state.pool.refresh())
    assert gw.client.get("/readyz").json()["status"] == "ready"


def test_a_worker_refusing_the_input_is_a_400_not_a_500(gw):
    gw.fake.replica(A).mode = gw.fake.replica(B).mode = "reject"
    r = gw.client.post("/v1/intent", json={"text": "你好"}, headers=headers())
    assert_error(r, 400, "invalid_text")


def test_gateway_starts_and_degrades_without_any_worker(tmp_path):
    app, fake, registry = build(tmp_path, store=demo_store())
    fake.replica(A).mode = fake.replica(B).mode = "down"
    with TestClient(app) as client:
        ready = TestClient(app.state.internal_app).get("/readyz")  # the detailed answer: internal port
        assert ready.status_code == 503 and ready.json()["knowledge_base"]["ready"] is False
        assert (
            client.post("/v1/chat", json={"session_id": "s", "text": "你好"}, headers=headers()).status_code
            == 503
        )
        fake.replica(A).mode = fake.replica(B).mode = "ok"
        asyncio.run(app.state.pool.refresh())
        asyncio.run(app.state.kb.refresh())
        assert client.get("/readyz").json()["status"] == "ready"
        r = client.post("/v1/chat", json={"session_id": "s", "text": "下单后多久发货？"}, headers=headers())
        assert r.json()["action"] == "answer"


def test_chat_text_limits_name_the_field(gw):
    err = assert_error(gw.chat("很" * 65), 400, "text_too_long")
    assert err["message"].startswith("text:")
    assert_error(gw.chat(" \u3000 "), 400, "empty_text")


def test_with_the_knowledge_base_disabled_chat_works_and_readiness_ignores_it(tmp_path):
    app, fake, registry = build(tmp_path, faq_enabled=False)
    with TestClient(app) as client:
        assert client.get("/readyz").json()["status"] == "ready"
        body = client.post("/v1/chat", json={"session_id": "s", "text": "我要投诉"}, headers=headers()).json()
        assert body["action"] == "handoff" and body["degraded"] == [] and body["faq_hits"] == []
        assert client.get("/admin/faq/faqs", headers=headers()).status_code == 404  # not mounted


def test_admission_control_sheds_with_503_overloaded_and_recovers(tmp_path):
    """Past `max_inflight` requests in flight, a request waits `admission_wait_s` for a slot, then gets 503
    `overloaded` with Retry-After at once (no unbounded queue); once a slot frees up it is served again."""
    import asyncio

    import httpx

    from tests.gateway_app import build, headers

    app, _, registry = build(tmp_path, max_inflight=1, admission_wait_s=0.05)

    async def scenario():
        admission = app.state.admission
        transport = httpx.ASGITransport(app=app)
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
                body = {"session_id": "s-1", "text": "下单后多久发货？"}
                await admission.semaphore.acquire()  # another request holds the only slot
                try:
                    shed = await client.post("/v1/chat", json=body, headers=headers())
                    intent = await client.post("/v1/intent", json={"text": "退款"}, headers=headers())
                finally:
                    admission.semaphore.release()
                served = await client.post("/v1/chat", json=body, headers=headers())
                return shed, intent, served

    shed, intent, served = asyncio.run(scenario())
    assert shed.status_code == 503 and shed.json()["error"]["code"] == "overloaded"
    assert shed.headers["retry-after"] == "1" and "in flight" in shed.json()["error"]["message"]
    assert intent.status_code == 503  # every /v1 route shares the slots
    assert served.status_code == 200, served.text
    assert registry.get_sample_value("kefu_gateway_shed_total", {"route": "/v1/chat"}) == 1
    assert registry.get_sample_value("kefu_gateway_shed_total", {"route": "/v1/intent"}) == 1


def test_every_gateway_error_has_one_status_in_the_one_mapper():
    """Core and edge code raise the classes of errors.py (no HTTP status in them); api/http.py STATUS is the only
    place they become HTTP. A new class without a row would answer 500."""
    from services.gateway.api.http import STATUS
    from services.gateway.core import errors

    classes = {c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.GatewayError)}
    assert classes - {errors.GatewayError} == set(STATUS)
    assert sorted(STATUS.values()) == [400, 401, 403, 429, 503]


def test_no_gateway_module_speaks_http_status_outside_the_edge():
    """`raise HTTPException` / status numbers in core modules were the old scheme (ApiError(503, ...))."""
    import re

    root = Path(__file__).resolve().parents[1] / "services" / "gateway"
    offenders = [
        f"{p.relative_to(root)}:{n}"
        for p in sorted(root.rglob("*.py"))
        if p.relative_to(root).as_posix() != "api/http.py"
        for n, line in enumerate(p.read_text("utf-8").splitlines(), 1)
        if re.search(r"raise HTTPException\(|ApiError\(", line)
    ]
    assert offenders == []
