"""FAQ threshold calibration and the dense / BM25 / hybrid evaluation, with the deterministic test embedder."""

import json

import numpy as np
import pytest

from services.faq.evaluate import evaluate_store, rank_report
from services.faq.records import DataError
from services.faq.testing import HashingEmbedder
from services.faq.thresholds import Query, calibrate, choose, load, lowest_threshold, write
from tests import demo_kb
from tests.conftest import DATA, write_jsonl


def test_lowest_threshold_meets_the_precision_target():
    scores = np.array([0.95, 0.9, 0.85, 0.8, 0.7, 0.6])
    good = np.array([1, 1, 1, 0, 1, 0], dtype=float)
    assert lowest_threshold(scores, good, 1.0) == 0.85
    assert lowest_threshold(scores, good, 0.8) == 0.7  # 4 of 5 at or above 0.7
    assert lowest_threshold(scores, np.zeros(6), 0.5) == 1.0  # never reached: never answer


def test_the_answer_threshold_also_caps_the_unanswerable_messages_answered():
    """Precision alone: many answerable messages let a high share of the uncovered ones through (here 95 %
    precision holds down to 0.80, where 2 of 4 uncovered messages would get an answer); the cap raises the
    threshold until at most the allowed share of them is answered."""
    from services.faq.domain import FaqHit

    def query(faq_id, top):
        hit = FaqHit(
            faq_id=top,
            question="q",
            answer="a",
            category="c",
            matched_text="q",
            matched_standard=True,
            score=1.0,
            source="hybrid",
        )
        return Query("text", faq_id, "tune", hits=[hit])

    answerable = [(query(f"f{i}", f"f{i}"), 0.99 - i * 0.005) for i in range(38)]
    uncovered = [(query(None, "f0"), p) for p in (0.9, 0.8, 0.5, 0.4)]
    queries = [q for q, _ in answerable + uncovered]
    probs = np.array([p for _, p in answerable + uncovered])
    groups = np.arange(len(queries))
    loose = choose(queries, probs, groups, 0.95, 0.8)
    assert loose["answer"] <= 0.8 and loose["unanswerable_answered"] == 0.5
    capped = choose(queries, probs, groups, 0.95, 0.8, max_unanswerable_answered=0.25)
    assert 0.8 < capped["answer"] <= 0.9 and capped["unanswerable_answered"] == 0.25
    assert capped["answer_precision"] >= 0.95
    none = choose(queries, probs, groups, 0.95, 0.8, max_unanswerable_answered=0.0)
    assert none["answer"] > 0.9 and none["unanswerable_answered"] == 0.0


def test_calibration_on_the_demo_kb(tmp_path):
    result = calibrate(
        HashingEmbedder(dim=64),
        DATA / "faq_kb_demo" / "faq.jsonl",
        DATA / "faq_kb_demo" / "queries_dev.jsonl",
    )
    # every alternative of the KB (each searched with its fold left out of the index) + every query
    assert result.counts == {"alternative": demo_kb.ALTERNATIVES, "queries": demo_kb.QUERIES}
    assert result.queries == demo_kb.ALTERNATIVES + demo_kb.QUERIES
    assert result.unanswerable == demo_kb.UNANSWERABLE > 0
    assert result.score == "confidence" and result.answer_confidence() is not None
    # a calibrator that never answers (threshold 1.0, coverage 0) or never suggests fails here: the hashed
    # n-gram embedder answers a few of these messages at the 95 % precision target and suggests for many more
    assert 0.0 < result.suggest < result.answer < 1.0
    assert result.answer_precision >= 0.95 and result.answer_coverage > 0
    assert result.suggest_precision >= 0.8 and result.suggest_coverage > result.answer_coverage
    write(tmp_path, 3, result)
    assert load(tmp_path, 3) == result and load(tmp_path, 4) is None
    assert (
        json.loads((tmp_path / "thresholds.json").read_text("utf-8"))["versions"]["3"]["encoder"]
        == result.encoder
    )


def test_calibration_rejects_queries_for_unknown_faqs(tmp_path):
    queries = write_jsonl(tmp_path / "q.jsonl", [{"query": "怎么退钱", "faq_id": "faq-999"}])
    with pytest.raises(DataError, match="not in the knowledge base"):
        calibrate(HashingEmbedder(dim=64), DATA / "faq_kb_demo" / "faq.jsonl", queries)


def test_rank_report():
    report = rank_report([1, 2, None, 10])
    assert report == {
        "recall_at_1": 0.25,
        "recall_at_5": 0.5,
        "recall_at_10": 0.75,
        "mrr": round((1 + 0.5 + 0.1) / 4, 4),
    }


@pytest.mark.slow
def test_dense_bm25_hybrid_through_milvus_lite(tmp_path):
    kb = ["花呗怎么还款", "借呗可以提前还吗", "怎么开通花呗", "顺丰快递几天到", "增值税专用发票怎么开"]
    queries = ["花呗如何还钱", "借呗提前还款", "顺丰要几天", "我要开增值税专用发票"]
    gold = [0, 1, 3, 4]
    results = evaluate_store(kb, queries, gold, HashingEmbedder(dim=64), tmp_path)
    for mode in ("dense", "bm25", "hybrid"):
        assert set(results[mode]) >= {"recall_at_1", "recall_at_5", "recall_at_10", "mrr"}
        assert results[mode]["recall_at_5"] == 1.0  # five entries: everything is in the top 5
    assert results["bm25"]["recall_at_1"] >= 0.75
    assert results["store"]["bm25_supported"] is True


def test_thresholds_chosen_on_a_tuning_set_and_applied_by_the_stored_coefficients(tmp_path):
    """Fitted on the KB + queries, thresholds picked on the chat set's answerable / unanswerable messages; the
    stored coefficients (what the gateway applies) reproduce the precision reported."""
    from services.faq.store import InMemoryFaqStore, embed_entries
    from services.faq.testing import load_demo_kb

    chat = DATA / "chat_eval" / "chat_dev.jsonl"
    embedder = HashingEmbedder(dim=64)
    result = calibrate(
        embedder,
        DATA / "faq_kb_demo" / "faq.jsonl",
        DATA / "faq_kb_demo" / "queries_dev.jsonl",
        tune_path=chat,
    )
    rows = [json.loads(line) for line in chat.read_text("utf-8").splitlines()]
    rows = [r for r in rows if r["kind"] in ("answerable", "unanswerable")]
    assert (result.queries, result.unanswerable) == (len(rows), 50)
    write(tmp_path, 1, result)
    model = load(tmp_path, 1).answer_confidence()
    kb = load_demo_kb()
    store = InMemoryFaqStore(64)
    store.upsert(kb, embed_entries(embedder, kb))
    answered = right = 0
    for row, vec in zip(rows, embedder.embed([r["text"] for r in rows]), strict=True):
        hits = store.search(row["text"], vec, 5, "hybrid")
        probs = model.probabilities(hits, row["text"])
        best = max(range(len(hits)), key=lambda i: probs[i]) if hits else None
        if best is not None and probs[best] >= result.answer:
            answered += 1
            right += hits[best].faq_id == row["faq_id"]
    assert answered > 0 and right / answered == pytest.approx(result.answer_precision, abs=1e-4)
    assert result.answer == 1.0 or result.answer_precision >= 0.95
    assert result.unanswerable_answered <= 0.08


def test_an_old_cosine_calibration_still_loads_without_a_confidence(tmp_path):
    old = {"answer": 0.9, "suggest": 0.83, "answer_precision": 1.0, "answer_coverage": 0.02}
    old |= {"suggest_precision": 0.8, "suggest_coverage": 0.25, "queries": 224, "unanswerable": 42}
    old |= {"encoder": "faq-v1", "calibrated_on": "x", "calibrated_at": "2026-12-01T07:54:20Z"}
    (tmp_path / "thresholds.json").write_text(json.dumps({"versions": {"1": old}}), "utf-8")
    loaded = load(tmp_path, 1)
    assert loaded.score == "cosine" and loaded.answer_confidence() is None
    broken = old | {
        "score": "confidence",
        "confidence": {"features": ["cosine"], "weights": [1.0], "bias": 0},
    }
    (tmp_path / "thresholds.json").write_text(json.dumps({"versions": {"1": broken}}), "utf-8")
    with pytest.raises(ValueError, match="features"):
        load(tmp_path, 1)
