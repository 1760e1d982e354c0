"""The FaqStore contract, run against the in-memory fake and embedded milvus-lite (a tmp .db file)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from services.faq.domain import (
    DuplicateQuestion,
    FaqEntry,
    FaqNotFound,
    InvalidFaq,
    InvalidQuery,
    kb_terms,
)
from services.faq.milvus_store import MilvusFaqStore
from services.faq.scoring import HybridRanker
from services.faq.store import FaqStore, InMemoryFaqStore, embed_entries
from services.faq.testing import ConstantEmbedder, HashingEmbedder, load_demo_kb
from tests import demo_kb

DIM = 64
EMB = HashingEmbedder(DIM)
KB = load_demo_kb()
TERMS = kb_terms(KB)
BACKENDS = ["memory", "milvus-lite"]


def open_store(backend: str, path, **kw) -> FaqStore:
    if backend == "memory":
        return InMemoryFaqStore(DIM, **kw)
    return MilvusFaqStore(
        str(path / "faq.db"), "faq", DIM, embedder_version=EMB.version, jieba_words=TERMS, **kw
    )


def put(store: FaqStore, *entries: FaqEntry, embedder=EMB) -> int:
    return store.upsert(list(entries), embed_entries(embedder, list(entries)))


def search(store: FaqStore, text: str, mode="hybrid", top_k=3, embedder=EMB):
    return store.search(text, embedder.embed([text])[0], top_k=top_k, mode=mode)


def faq(faq_id: str, question: str, *alternatives: str, category="物流查询", answer=None) -> FaqEntry:
    return FaqEntry(
        faq_id=faq_id,
        question=question,
        answer=answer or f"{question}的答案",
        category=category,
        alternatives=list(alternatives),
    )


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path):
    s = open_store(request.param, tmp_path)
    yield s
    s.close()


@pytest.fixture(scope="module", params=BACKENDS)
def kb_store(request, tmp_path_factory):
    """The demo knowledge base (data/faq_kb_demo) with hashed n-gram vectors; read-only tests share it."""
    s = open_store(request.param, tmp_path_factory.mktemp("kb"))
    assert put(s, *KB) == sum(len(e.phrasings) for e in KB)
    yield s
    s.close()


@pytest.fixture(scope="module", params=BACKENDS)
def blind_kb_store(request, tmp_path_factory):
    """The demo knowledge base with an uninformative encoder: every phrasing has the same vector."""
    s = open_store(request.param, tmp_path_factory.mktemp("blind"))
    put(s, *KB, embedder=ConstantEmbedder(DIM))
    yield s
    s.close()


# ── CRUD ────────────────────────────────────────────────────────────────────────────────────────────


def test_upsert_get_roundtrip(store):
    e = FaqEntry(
        faq_id="faq-1",
        question="默认发什么快递？",
        answer="默认中通。",
        category="物流查询",
        alternatives=["用什么快递", "能发顺丰吗"],
        tags=["顺丰", "快递公司"],
    )
    assert put(store, e) == 3
    assert store.get("faq-1") == e
    assert store.count() == 1
    with pytest.raises(FaqNotFound, match="faq-404"):
        store.get("faq-404")


def test_list_pages_in_id_order_and_filters_category(store):
    entries = [
        faq(f"f-{i:02d}", f"问题{i}", category="退款" if i % 3 == 0 else "物流查询") for i in range(1, 8)
    ]
    put(store, *entries[::-1])
    page, total = store.list(0, 3)
    assert total == 7 and [e.faq_id for e in page] == ["f-01", "f-02", "f-03"]
    page, total = store.list(6, 3)
    assert total == 7 and [e.faq_id for e in page] == ["f-07"]
    page, total = store.list(0, 10, category="退款")
    assert total == 2 and [e.faq_id for e in page] == ["f-03", "f-06"]
    assert store.list(0, 5, category="没有") == ([], 0)
    with pytest.raises(InvalidQuery):
        store.list(-1, 5)


def test_delete(store):
    put(store, faq("f-1", "怎么退货", "退货流程"), faq("f-2", "怎么换货"))
    assert store.delete(["f-1", "f-404"]) == 1
    assert store.delete(["f-1"]) == 0
    with pytest.raises(FaqNotFound):
        store.get("f-1")
    assert store.count() == 1
    assert all(h.faq_id != "f-1" for h in search(store, "怎么退货", top_k=5))
    assert store.health()["rows"] == 1


def test_upsert_replaces_every_phrasing(store):
    put(store, faq("f-1", "怎么退货", "退货流程", "退货地址在哪", "退货要钱吗"))
    put(store, faq("f-1", "如何退货", "退货步骤"))
    got = store.get("f-1")
    assert got.question == "如何退货" and got.alternatives == ["退货步骤"]
    assert store.health()["rows"] == 2 and store.count() == 1
    for text in ("退货地址在哪", "退货要钱吗", "怎么退货"):
        assert all(h.matched_text in ("如何退货", "退货步骤") for h in search(store, text, top_k=5))


# ── duplicates and invalid entries ──────────────────────────────────────────────────────────────────


def test_phrasing_of_another_faq_is_rejected(store):
    put(store, faq("f-1", "可以开增值税专用发票吗", "能开专票吗"))
    with pytest.raises(DuplicateQuestion) as e:
        put(store, faq("f-2", "能开 专票吗？"))  # same phrasing after folding
    assert e.value.faq_id == "f-2" and e.value.existing_faq_id == "f-1"
    assert "f-1" in e.value.message and "f-2" in e.value.message and "能开 专票吗？" in e.value.message
    with pytest.raises(FaqNotFound):
        store.get("f-2")  # nothing written


def test_duplicates_inside_one_batch_are_rejected(store):
    with pytest.raises(DuplicateQuestion, match="f-a"):
        put(store, faq("f-a", "怎么退款"), faq("f-b", "退款多久", "怎么退款"))
    with pytest.raises(InvalidFaq, match="repeated"):
        put(store, faq("f-a", "怎么退款"), faq("f-a", "退款多久"))
    assert store.count() == 0


def test_a_phrasing_can_move_between_faqs_in_one_batch(store):
    put(store, faq("f-1", "怎么退款", "退款去哪了"))
    put(store, faq("f-1", "怎么退款"), faq("f-2", "退款到哪里了", "退款去哪了"))
    assert store.get("f-2").alternatives == ["退款去哪了"]


def test_empty_question_is_rejected_before_the_store():
    with pytest.raises(InvalidFaq, match="faq f-1: question: question is empty"):
        faq("f-1", "  ")


def test_wrong_vectors_are_rejected(store):
    e = faq("f-1", "怎么退款", "退款去哪了")
    with pytest.raises(InvalidFaq, match=r"\(2, 64\)"):
        store.upsert([e], [np.ones((1, DIM), np.float32)])
    with pytest.raises(InvalidFaq, match="NaN"):
        store.upsert([e], [np.full((2, DIM), np.nan, np.float32)])


# ── search ──────────────────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("mode", ["hybrid", "dense", "bm25"])
def test_search_names_the_faq_and_the_matched_phrasing(kb_store, mode):
    hits = search(kb_store, "能不能发顺丰", mode=mode)
    top = hits[0]
    assert top.faq_id == "faq-004" and top.source == mode
    assert top.matched_text == "能不能发顺丰" and not top.matched_standard
    assert top.question == "默认发什么快递？可以指定顺丰吗？" and top.category == "物流查询"
    assert "顺丰" in top.answer and top.tags == ["顺丰", "快递公司"]
    assert all(0.0 <= h.score <= 1.0 for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    if mode == "bm25":
        assert top.cosine is None and top.bm25 > 0
    else:
        assert top.cosine == pytest.approx(1.0, abs=1e-4)


def test_search_groups_phrasings_by_faq(kb_store):
    for mode in ("hybrid", "dense", "bm25"):
        hits = search(kb_store, "退款多久到账", mode=mode, top_k=10)
        ids = [h.faq_id for h in hits]
        assert len(ids) == 10 and len(set(ids)) == 10, mode
        assert ids[0] == "faq-024"


def test_hybrid_cosine_is_the_dense_cosine_of_the_matched_phrasing(kb_store):
    dense = {h.matched_text: h.cosine for h in search(kb_store, "退款多久到账", mode="dense", top_k=20)}
    for h in search(kb_store, "退款多久到账", mode="hybrid", top_k=5):
        if h.matched_text in dense:
            assert h.cosine == pytest.approx(dense[h.matched_text], abs=1e-4)
    assert search(kb_store, "退款多久到账", mode="hybrid")[0].score == pytest.approx(1.0)


TERM_QUERIES = [
    ("顺丰", "faq-004"),
    ("有顺丰吗", "faq-004"),
    ("增值税专用发票", "faq-054"),
    ("我要开增值税专用发票", "faq-054"),
]


@pytest.mark.parametrize(("query", "expected"), TERM_QUERIES)
def test_bm25_finds_exact_terms_when_the_encoder_is_blind(blind_kb_store, query, expected):
    hits = search(blind_kb_store, query, mode="bm25", embedder=ConstantEmbedder(DIM))
    assert hits[0].faq_id == expected
    assert any(t in hits[0].matched_text for t in ("顺丰", "增值税专用发票"))


@pytest.mark.parametrize(("query", "expected"), TERM_QUERIES)
def test_hybrid_ranks_exact_terms_first(kb_store, query, expected):
    assert search(kb_store, query, mode="hybrid")[0].faq_id == expected


def test_weighted_ranker(store):
    store.ranker = HybridRanker("weighted", dense_weight=0.3, bm25_weight=0.7)
    put(store, *KB[:60])
    hits = search(store, "我要开增值税专用发票", top_k=5)
    assert hits[0].faq_id == "faq-054" and all(0 <= h.score <= 1 for h in hits)


def wait_for(predicate, seconds=1.0):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"not visible to search within {seconds} s"
        time.sleep(0.02)


def test_writes_are_visible_to_search_within_a_second(store):
    put(store, faq("f-1", "能开专票吗"))
    put(store, faq("f-2", "送货上楼收费吗"))
    wait_for(lambda: [h.faq_id for h in search(store, "送货上楼收费吗", mode="bm25")][:1] == ["f-2"])
    store.delete(["f-2"])
    wait_for(lambda: all(h.faq_id != "f-2" for h in search(store, "送货上楼收费吗", mode="bm25")))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"top_k": 0}, "top_k"),
        ({"top_k": 101}, "top_k"),
        ({"mode": "fuzzy"}, "mode"),
        ({"query_vector": np.ones(3)}, "dim is 64"),
        ({"query_vector": None}, "needs a query vector"),
        ({"mode": "bm25", "query_text": " "}, "needs a query text"),
    ],
)
def test_bad_searches_are_refused(kb_store, kwargs, message):
    args = {
        "query_text": "退款",
        "query_vector": EMB.embed(["退款"])[0],
        "top_k": 3,
        "mode": "hybrid",
        **kwargs,
    }
    with pytest.raises(InvalidQuery, match=message):
        kb_store.search(**args)


def test_punctuation_only_query_falls_back_to_dense(kb_store):
    hits = kb_store.search("？？", EMB.embed(["退款多久到账"])[0], top_k=1, mode="hybrid")
    assert hits[0].source == "dense" and hits[0].faq_id == "faq-024"


def test_health(kb_store):
    h = kb_store.health()
    assert h["ok"] is True and h["bm25_supported"] is True
    assert h["rows"] == demo_kb.ROWS and h["faqs"] == demo_kb.FAQS
    assert {"backend", "collection"} <= set(h)


def test_keyword_search_needs_no_query_vector(kb_store):
    """The gateway's fallback while the encoder is down (issue 14 item 6): BM25 with the text alone."""
    hits = kb_store.search("能不能发顺丰", None, top_k=3, mode="bm25")
    assert hits[0].faq_id == "faq-004" and hits[0].source == "bm25" and hits[0].cosine is None
