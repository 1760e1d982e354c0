"""The FAQ store's search cache (issue 15 item 3): a repeated search is answered without Milvus, and every write
(update, delete, alias switch), through any store object of this process at that uri, is visible to the very
next search. Real milvus-lite (embedded file)."""

from __future__ import annotations

import pytest

from services.faq.domain import FaqEntry
from services.faq.milvus_search import SearchCache
from services.faq.milvus_store import MilvusFaqStore
from services.faq.reindex import reindex
from services.faq.store import embed_entries
from services.faq.testing import HashingEmbedder, load_demo_kb

DIM = 64
V1 = HashingEmbedder(DIM)
KB = load_demo_kb()
QUERY = "能不能发顺丰"


class Counting:
    """Counts the searches that reach Milvus (the store's client, wrapped)."""

    def __init__(self, client):
        self.client, self.searches = client, 0

    def __getattr__(self, name):
        if name in ("search", "hybrid_search"):
            self.searches += 1
        return getattr(self.client, name)


@pytest.fixture
def store(tmp_path):
    s = MilvusFaqStore(
        str(tmp_path / "faq.db"), "faq", DIM, embedder_version=V1.version, search_cache_size=64
    )
    s.upsert(KB, embed_entries(V1, KB))
    s._client = Counting(s._client)
    yield s
    s.close()


def search(store: MilvusFaqStore, mode="hybrid"):
    return store.search(QUERY, V1.embed([QUERY])[0], top_k=3, mode=mode)


def test_a_repeated_search_does_not_reach_milvus(store):
    first = search(store)
    assert store._client.searches == 1
    assert search(store) == first and search(store) == first
    assert store._client.searches == 1
    search(store, mode="dense")  # another mode is another answer
    assert store._client.searches == 2


def test_an_admin_write_is_visible_at_once(store):
    top = search(store)[0]
    entry = next(e for e in KB if e.faq_id == top.faq_id)
    edited = FaqEntry(**{**entry.model_dump(), "answer": "新的回答：顺丰到付可以"})
    store.upsert([edited], embed_entries(V1, [edited]))
    assert search(store)[0].answer == "新的回答：顺丰到付可以"
    store.delete([top.faq_id])
    assert top.faq_id not in [h.faq_id for h in search(store)]
    assert store._client.searches == 3  # each search after a write went to Milvus


def test_a_write_by_another_store_object_of_this_process_is_visible_at_once(store, tmp_path):
    before = search(store)
    marked = [FaqEntry(**{**e.model_dump(), "answer": f"v2 {e.answer}"}) for e in KB]

    def build(name):
        return MilvusFaqStore(store.uri, "faq", DIM, physical_collection=name, embedder_version=V1.version)

    reindex(build, marked, V1, "faq", drop_grace_s=0)  # a new collection, then the alias switched to it
    assert [h.answer for h in search(store)] == [f"v2 {h.answer}" for h in before]


def test_entries_expire_and_the_cache_is_bounded():
    now = [0.0]
    cache = SearchCache(2, ttl_s=10, clock=lambda: now[0])
    cache.put("a", [1])
    cache.put("b", [2])
    assert cache.get("a") == [1]
    cache.put("c", [3])  # "b" is the least recently used
    assert cache.get("b") is None and cache.get("c") == [3]
    now[0] = 10.0
    assert cache.get("a") is None
    assert SearchCache(0, ttl_s=10).get("a") is None
