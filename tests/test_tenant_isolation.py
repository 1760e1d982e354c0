"""Tenant isolation of per-request state, through the HTTP API with two tenants' keys: conversation sessions
(memory and Redis stores), the response cache and canary stickiness. Rate-limit buckets are keyed by
tenant and key already (`Edge.rate_limit`); a test here keeps it that way."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from services.canary.backends import write_atomic
from services.canary.routing import bucket, sticky_id
from services.gateway.api.app import create_app
from services.gateway.core.errors import TooManyRequests
from services.gateway.edge.guard import EdgeSettings
from services.gateway.settings import GatewaySettings
from services.gateway.state.sessions import MemorySessionStore, Session, SessionKey
from tests.gateway_app import A, B, headers, write_keys
from tests.gateway_fakes import DEMO_KEY, FakeWorkers, demo_store
from tests.redis_fixture import redis_url  # noqa: F401

KEY_A, KEY_B = DEMO_KEY, "chat-only-key-0001"  # tenants "demo" and "acme" (tests/gateway_app.py)
TENANT_A, TENANT_B = "demo", "acme"
SID = "sess-shared-1"  # both tenants' clients chose the same session id


def make_app(tmp_path: Path, redis: str = "", **overrides) -> tuple[TestClient, FakeWorkers]:
    fake = FakeWorkers([A, B])
    fake.set_versions("intent", ["1", "2"])
    options = {"model_repository": None, "refresh_interval_s": 3600, **overrides}
    settings = GatewaySettings(workers={"intent": [A, B], "sentiment": [A, B], "faq": [A, B]}, **options)
    edge = EdgeSettings(api_keys_file=write_keys(tmp_path), redis_url=redis, max_text_chars=64)
    app = create_app(
        settings, edge, registry=CollectorRegistry(), transport=fake.transport, store=demo_store()
    )
    return TestClient(app), fake


def chat(client: TestClient, key: str, text: str, session_id: str = SID) -> dict:
    r = client.post("/v1/chat", json={"session_id": session_id, "text": text}, headers=headers(key))
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.slow)])
def state(request, tmp_path):
    """A gateway whose sessions live in memory, or in a real Redis shared by replicas."""
    redis = ""
    if request.param == "redis":
        redis = request.getfixturevalue("redis_url")
        import redis as redis_lib  # flush what an earlier test left

        with redis_lib.Redis.from_url(redis) as flush:
            flush.flushdb()
    client, _ = make_app(tmp_path, redis)
    with client:
        yield client


def test_another_tenants_session_id_starts_a_new_conversation(state):
    a_first = chat(state, KEY_A, "订单号 A2024-778899 电话 13812345678")
    assert a_first["slots"] == {"order_no": "A2024-778899", "phone": "138****5678"}
    b_turn = chat(state, KEY_B, "你好")
    assert b_turn["slots"] == {}  # never tenant A's order number or masked phone
    chat(state, KEY_B, "订单号 B-99887766")
    a_again = chat(state, KEY_A, "你好")
    assert a_again["slots"] == {"order_no": "A2024-778899", "phone": "138****5678"}  # B wrote nothing of A's


@pytest.mark.asyncio
async def test_unresolved_count_is_per_tenant(tmp_path):
    client, _ = make_app(tmp_path)
    with client:
        chat(client, KEY_A, "嗯嗯")
        chat(client, KEY_A, "嗯嗯")
        chat(client, KEY_B, "嗯嗯")
        sessions = client.app.state.orchestrator.sessions
        a = await sessions.get(SessionKey(TENANT_A, SID))
        b = await sessions.get(SessionKey(TENANT_B, SID))
    assert (a.unresolved, len(a.turns)) == (2, 2)
    assert (b.unresolved, len(b.turns)) == (1, 1)


@pytest.mark.asyncio
async def test_store_refuses_a_bare_session_id():
    store = MemorySessionStore()
    with pytest.raises(TypeError, match="SessionKey"):
        await store.get(SID)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        SessionKey("", SID)
    with pytest.raises(ValueError):
        SessionKey("a:b", SID)  # a tenant id never holds the storage key separator
    a, b = SessionKey(TENANT_A, SID), SessionKey(TENANT_B, SID)
    s = await store.get(a)
    s.slots["order_no"] = "A2024-778899"
    await store.save(s)
    assert (await store.get(b)) == Session(b) and (await store.get(a)).slots == s.slots


@pytest.mark.slow
@pytest.mark.asyncio
async def test_redis_keys_hold_the_tenant(redis_url):  # noqa: F811
    from services.gateway.state.redis_conn import connect
    from services.gateway.state.sessions import RedisSessionStore

    client = connect(redis_url, timeout_s=2.0)
    await client.flushdb()
    try:
        store = RedisSessionStore(client)
        s = await store.get(SessionKey(TENANT_A, SID))
        s.add_turn("退款", "clarify", "订单号 A2024-778899")
        await store.save(s)
        assert await client.keys("kefu:session:*") == [f"kefu:session:{TENANT_A}:{SID}"]
        # a value copied under another tenant's key (a bug, an operator) is never handed out there
        await client.set(f"kefu:session:{TENANT_B}:{SID}", s.to_json())
        assert await store.get(SessionKey(TENANT_B, SID)) == Session(SessionKey(TENANT_B, SID))
    finally:
        await client.aclose()


def intent_calls(fake: FakeWorkers) -> int:
    return sum(1 for r in fake.replicas.values() for model, _, _ in r.texts if model == "intent")


def test_response_cache_is_per_tenant(tmp_path):
    client, fake = make_app(tmp_path)
    text = "订单号 A2024-778899 到哪了"

    def intent(key: str) -> str:
        r = client.post("/v1/intent", json={"text": text}, headers=headers(key))
        assert r.status_code == 200, r.text
        return r.headers["server-timing"]

    with client:
        assert "intent;dur=" in intent(KEY_A)  # a miss: the model is called
        assert "intent;dur=" not in intent(KEY_A)  # a hit of tenant A's own entry
        # tenant A's entry never answers tenant B: a hit (visible in Server-Timing and latency) would tell
        # B that one of A's customers sent this exact text
        assert "intent;dur=" in intent(KEY_B)
        assert "intent;dur=" not in intent(KEY_B)
    assert intent_calls(fake) == 2


def test_canary_stickiness_is_per_tenant_and_session(tmp_path):
    path = tmp_path / "routing.yaml"
    write_atomic(path, yaml.safe_dump({"models": {"intent": {"stable": "1", "canary": "2", "weight": 50}}}))
    client, _ = make_app(tmp_path, routing_file=path, routing_poll_s=0.05, cache_enabled=False)
    sessions = [f"s-{i}" for i in range(40)]
    with client:
        served = {
            (key, s): chat(client, key, "我的快递到哪了", s)["model_versions"]["intent"]
            for key in (KEY_A, KEY_B)
            for s in sessions
        }
        again = {s: chat(client, KEY_A, "我要投诉", s)["model_versions"]["intent"] for s in sessions[:10]}
    for tenant, key in ((TENANT_A, KEY_A), (TENANT_B, KEY_B)):
        expected = {s: "2" if bucket("intent", sticky_id(tenant, s)) < 5000 else "1" for s in sessions}
        assert {s: served[(key, s)] for s in sessions} == expected
    assert all(again[s] == served[(KEY_A, s)] for s in again)  # sticky within a tenant
    # equal session ids of two tenants are independent draws, not the same side
    assert any(served[(KEY_A, s)] != served[(KEY_B, s)] for s in sessions)


def test_sticky_id_is_unambiguous():
    assert sticky_id("a", "b:c") != sticky_id("a:b", "c")
    with pytest.raises(ValueError):
        sticky_id("a/b", "c")


@pytest.mark.asyncio
async def test_rate_limit_buckets_are_per_tenant_and_key(tmp_path):
    from services.gateway.edge.security import Principal

    client, _ = make_app(tmp_path)
    edge = client.app.state.edge
    same = {"key_id": "jwt:user-1", "scopes": frozenset({"chat"}), "rate_per_s": 0.001, "burst": 1}
    a, b = Principal(tenant=TENANT_A, **same), Principal(tenant=TENANT_B, **same)  # one JWT subject
    await edge.rate_limit(a)
    with pytest.raises(TooManyRequests) as e:
        await edge.rate_limit(a)
    assert isinstance(e.value, TooManyRequests)
    await edge.rate_limit(b)  # tenant A's empty bucket is not tenant B's
