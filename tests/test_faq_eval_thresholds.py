"""FAQ threshold calibration and the dense / BM25 / hybrid evaluation, with the deterministic test embedder."""

import json

import numpy as np
import pytest

from models.corpus import DataError
from services.faq.evaluate import evaluate_store, rank_report
from services.faq.testing import HashingEmbedder
from services.faq.thresholds import calibrate, load, lowest_threshold, write
from tests.conftest import DATA, write_jsonl


def test_lowest_threshold_meets_the_precision_target():
    scores = np.array([0.95, 0.9, 0.85, 0.8, 0.7, 0.6])
    good = np.array([1, 1, 1, 0, 1, 0], dtype=float)
    assert lowest_threshold(scores, good, 1.0) == 0.85
    assert lowest_threshold(scores, good, 0.8) == 0.7  # 4 of 5 at or above 0.7
    assert lowest_threshold(scores, np.zeros(6), 0.5) == 1.0  # never reached: never answer


def test_calibration_on_the_demo_kb(tmp_path):
    result = calibrate(
        HashingEmbedder(dim=64),
        DATA / "faq_kb_demo" / "faq.jsonl",
        DATA / "faq_kb_demo" / "queries_dev.jsonl",
    )
    assert result.queries == 224 and result.unanswerable == 42
    assert 0.0 <= result.suggest <= result.answer <= 1.0
    assert result.answer == 1.0 or result.answer_precision >= 0.9
    assert result.suggest == 1.0 or result.suggest_precision >= 0.8 or result.suggest == result.answer
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
