"""Conversation sessions: slot extraction by rule, and one contract for the memory and Redis stores (bounds,
TTL, copies, masked PII), plus what each adds (LRU in memory, degradation when Redis is down)."""

import asyncio

import pytest
import pytest_asyncio

from services.gateway.core.errors import InvalidInput
from services.gateway.edge.textnorm import normalize
from services.gateway.state.redis_conn import connect
from services.gateway.state.sessions import (
    MemorySessionStore,
    RedisSessionStore,
    Session,
    SessionKey,
    extract_slots,
)
from tests.redis_fixture import redis_url  # noqa: F401

PHONE = "13812345678"
TENANT = "shop-a"


def key(session_id: str) -> SessionKey:
    return SessionKey(TENANT, session_id)


@pytest.mark.parametrize(
    ("text", "slots"),
    [
        ("订单号 123456789012 还没发货", {"order_no": "123456789012"}),
        ("我的订单号是：A2024-778899", {"order_no": "A2024-778899"}),
        ("order no. 88776655 please", {"order_no": "88776655"}),
        ("单号1234567890查一下", {"order_no": "1234567890"}),
        ("1234567890 这个到哪了", {"order_no": "1234567890"}),  # a bare number of 10+ digits
        ("单号2024051212345678查一下", {"order_no": "2024051212345678"}),  # yyyyMMdd + sequence
        ("单号6212345678901234查一下", {}),  # 16 plain digits: card-shaped, never an order number
        (f"手机 {PHONE}", {"phone": "138****5678"}),
        (f"订单号 123456789012 电话{PHONE}", {"order_no": "123456789012", "phone": "138****5678"}),
        ("卡号 4111111111111111", {}),  # a bank card (Luhn) is never kept
        ("身份证 11010519491231002X", {}),  # nor an ID number
        ("order status please", {}),
        ("我的订单还没到", {}),
    ],
)
def test_extract_slots(text, slots):
    assert extract_slots(text) == slots


def test_extract_slots_after_normalisation_of_full_width_digits():
    assert extract_slots(normalize("订单号　１２３４５６７８９０１２")) == {"order_no": "123456789012"}


def test_session_turns_unresolved_and_json_roundtrip():
    s = Session(key("abc"))
    s.add_turn("物流查询", "clarify", "我的快递呢")
    s.add_turn("物流查询", "suggest", "订单号 123456789012")
    assert s.unresolved == 2 and s.recent_intents() == ["物流查询", "物流查询"]
    assert s.repeats("我的快递呢") and not s.repeats("别的")
    s.add_turn("物流查询", "answer", "好的")
    assert s.unresolved == 0 and s.slots == {"order_no": "123456789012"}
    again = Session.from_json(s.to_json())
    assert again == s and "我的快递呢" not in s.to_json()  # digests, never the text
    for _ in range(5):
        s.add_turn(None, "handoff", max_turns=3)
    assert len(s.turns) == 3 and s.unresolved == 5 and s.recent_intents() == []


@pytest_asyncio.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.slow)])
async def backend(request):
    """(make_store(max_turns, ttl_s), advance(seconds), raw(session_id) -> stored text)"""
    if request.param == "memory":
        now = [0.0]
        stores = []

        def make(max_turns=10, ttl_s=60.0):
            stores.append(MemorySessionStore(100, max_turns, ttl_s, clock=lambda: now[0]))
            return stores[-1]

        async def advance(seconds):
            now[0] += seconds

        async def raw(sid):
            return stores[-1]._data[key(sid)][1]

        yield make, advance, raw
    else:
        client = connect(request.getfixturevalue("redis_url"), timeout_s=2.0)
        await client.flushdb()

        def make(max_turns=10, ttl_s=60.0):
            return RedisSessionStore(client, max_turns, ttl_s)

        async def raw(sid):
            return await client.get(f"kefu:session:{TENANT}:{sid}")

        yield make, asyncio.sleep, raw
        await client.aclose()


@pytest.mark.asyncio
async def test_unknown_session_is_new_and_saves_round_trip(backend):
    make, _, raw = backend
    store = make()
    s = await store.get(key("sess-1"))
    assert s == Session(key("sess-1"))
    s.add_turn("退款", "suggest", f"订单号 123456789012 手机 {PHONE}")
    await store.save(s)
    got = await store.get(key("sess-1"))
    assert got == s and got.unresolved == 1
    assert got.slots == {"order_no": "123456789012", "phone": "138****5678"}
    assert PHONE not in await raw("sess-1")  # the phone is stored masked
    got.add_turn("退款", "answer")  # a change without save is not kept
    assert (await store.get(key("sess-1"))).unresolved == 1


@pytest.mark.asyncio
async def test_turns_are_bounded(backend):
    make, _, _ = backend
    store = make(max_turns=4)
    s = await store.get(key("sess-2"))
    for i in range(7):
        s.add_turn(f"intent{i}", "clarify")
    await store.save(s)
    got = await store.get(key("sess-2"))
    assert [t.intent for t in got.turns] == ["intent3", "intent4", "intent5", "intent6"]
    assert got.unresolved == 7


@pytest.mark.asyncio
async def test_sessions_expire_after_ttl_since_last_save(backend):
    make, advance, _ = backend
    store = make(ttl_s=0.4)
    s = await store.get(key("sess-3"))
    s.add_turn("其他/闲聊", "answer")
    await store.save(s)
    await advance(0.25)
    await store.save(await store.get(key("sess-3")))  # saving refreshes the TTL
    await advance(0.25)
    assert len((await store.get(key("sess-3"))).turns) == 1
    await advance(0.5)
    assert await store.get(key("sess-3")) == Session(key("sess-3"))


@pytest.mark.asyncio
async def test_bad_session_id_is_400(backend):
    make, _, _ = backend
    store = make()
    for bad in ("", "has space", "x" * 129, "键"):
        with pytest.raises(InvalidInput) as e:
            await store.get(SessionKey(TENANT, bad))
        assert isinstance(e.value, InvalidInput) and e.value.code == "invalid_session_id"


@pytest.mark.asyncio
async def test_memory_store_evicts_least_recently_used():
    store = MemorySessionStore(max_sessions=2, max_turns=5, ttl_s=60)
    for sid in ("a", "b"):
        s = await store.get(key(sid))
        s.add_turn("x", "answer")
        await store.save(s)
    await store.get(key("a"))  # a is now more recent than b
    c = await store.get(key("c"))
    c.add_turn("x", "answer")
    await store.save(c)
    assert len(store) == 2
    assert (await store.get(key("b"))).turns == [] and len((await store.get(key("a"))).turns) == 1


@pytest.mark.asyncio
async def test_redis_down_answers_without_context():
    dead = connect("redis://127.0.0.1:1/0", timeout_s=0.2, connect_timeout_s=0.2)
    store = RedisSessionStore(dead, 5, 60)
    s = await store.get(key("sess-4"))
    assert s == Session(key("sess-4"))
    s.add_turn("x", "answer")
    await store.save(s)  # logged, not raised
    await dead.aclose()


def test_store_bounds_are_checked():
    with pytest.raises(ValueError):
        MemorySessionStore(max_sessions=10, max_turns=0, ttl_s=10)
