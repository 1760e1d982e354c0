"""Response cache: keys change with every model version; one contract for the memory and Redis caches (hit,
miss, TTL, copies), LRU in memory, misses when Redis is down."""

import asyncio

import pytest
import pytest_asyncio

from services.gateway.state.cache import MemoryCache, RedisCache, cache_key
from services.gateway.state.redis_conn import connect
from tests.redis_fixture import redis_url  # noqa: F401

VERSIONS = {"intent": "3", "sentiment": "1", "faq": "2"}


def test_key_depends_on_every_part_and_not_on_version_order():
    def key(route="/v1/chat", text="怎么退货", versions=VERSIONS, extra="", tenant="acme"):
        return cache_key(route, text, versions, extra, tenant=tenant)

    base = key()
    assert base == key(versions=dict(reversed(list(VERSIONS.items()))))
    assert len(base) == 64
    changed = [
        key(versions={**VERSIONS, "intent": "4"}),  # a new model version
        key(versions={**VERSIONS, "faq_kb": "rev-9"}),  # another versioned input
        key(text="怎么退款"),
        key(route="/v1/intent"),
        key(extra="opt=1"),
        key(tenant="globex"),  # another tenant never shares an entry
    ]
    assert len({base, *changed}) == 7
    # no ambiguity from joining parts: ("a", "bc") and ("ab", "c") differ
    assert key("a", "bc", {}) != key("ab", "c", {})
    assert key(tenant="a", route="b:c") != key(tenant="a:b", route="c")


def test_key_requires_a_tenant():
    with pytest.raises(TypeError):
        cache_key("/v1/chat", "怎么退货", VERSIONS)  # type: ignore[call-arg]  (a caller cannot forget it)
    with pytest.raises(ValueError):
        cache_key("/v1/chat", "怎么退货", VERSIONS, tenant="")


@pytest_asyncio.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.slow)])
async def backend(request):
    """(make_cache(ttl_s), advance(seconds))"""
    if request.param == "memory":
        now = [0.0]

        async def advance(seconds):
            now[0] += seconds

        yield (lambda ttl_s=60.0: MemoryCache(100, ttl_s, clock=lambda: now[0])), advance
    else:
        client = connect(request.getfixturevalue("redis_url"), timeout_s=2.0)
        await client.flushdb()
        yield (lambda ttl_s=60.0: RedisCache(client, ttl_s)), asyncio.sleep
        await client.aclose()


@pytest.mark.asyncio
async def test_miss_then_hit_and_copies(backend):
    make, _ = backend
    cache = make()
    key = cache_key("/v1/chat", "怎么退货", VERSIONS, tenant="acme")
    assert await cache.get(key) is None
    answer = {"action": "answer", "faq_id": "f1", "score": 0.91, "hits": [{"id": "f1"}]}
    await cache.set(key, answer)
    got = await cache.get(key)
    assert got == answer
    got["hits"].append({"id": "f2"})  # mutating what came back does not change the cache
    assert await cache.get(key) == answer
    new_version = cache_key("/v1/chat", "怎么退货", {**VERSIONS, "faq": "3"}, tenant="acme")
    assert await cache.get(new_version) is None  # a version change never serves the old answer


@pytest.mark.asyncio
async def test_entries_expire(backend):
    make, advance = backend
    cache = make(ttl_s=0.3)
    await cache.set("k", {"v": 1})
    await advance(0.1)
    assert await cache.get("k") == {"v": 1}
    await advance(0.35)
    assert await cache.get("k") is None


@pytest.mark.asyncio
async def test_memory_cache_is_lru_bounded():
    cache = MemoryCache(max_entries=2, ttl_s=60)
    await cache.set("a", {"v": "a"})
    await cache.set("b", {"v": "b"})
    assert await cache.get("a") == {"v": "a"}  # a is now the most recently used
    await cache.set("c", {"v": "c"})
    assert len(cache) == 2
    assert await cache.get("b") is None and await cache.get("a") == {"v": "a"} and await cache.get("c")


@pytest.mark.asyncio
async def test_redis_down_is_a_miss():
    dead = connect("redis://127.0.0.1:1/0", timeout_s=0.2, connect_timeout_s=0.2)
    cache = RedisCache(dead, 60)
    await cache.set("k", {"v": 1})  # logged, not raised
    assert await cache.get("k") is None
    await dead.aclose()


def test_bounds_are_checked():
    with pytest.raises(ValueError):
        MemoryCache(max_entries=0)
