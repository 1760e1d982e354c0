"""The answer confidence's features and its stored form (what the gateway applies; no training imports)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from services.faq.confidence import FEATURES, AnswerConfidence, candidate_features
from services.faq.domain import FaqHit


def hit(faq_id, cosine, question, answer, category, score):
    return FaqHit(
        faq_id=faq_id, question=question, answer=answer, category=category, matched_text=question,
        matched_standard=True, score=score, source="hybrid", cosine=cosine,
    )  # fmt: skip


HITS = [
    hit("faq-009", 0.90, "运费怎么收？", "满99元包邮。", "物流查询", 1.0),
    hit("faq-022", 0.86, "商品坏了怎么维修？", "可申请维修。", "退换货", 0.5),
]


def test_features_per_hit():
    f = candidate_features(HITS, "耳机坏了能修吗", "退换货", 0.8)
    col = {name: i for i, name in enumerate(FEATURES)}
    assert f.shape == (2, len(FEATURES))
    assert f[:, col["cosine"]] == pytest.approx([0.90, 0.86])
    assert f[:, col["margin"]] == pytest.approx([0.04, -0.04])
    assert f[:, col["hybrid"]].tolist() == [1.0, 0.5] and f[:, col["first"]].tolist() == [1.0, 0.0]
    assert f[:, col["intent_agrees"]].tolist() == [0.0, 0.8]
    assert f[:, col["intent_disagrees"]].tolist() == [0.8, 0.0]
    # 坏 and 修 are shared with the repair FAQ only
    assert f[0, col["overlap_faq_chars"]] == 0.0 and f[1, col["overlap_faq_chars"]] > 0.25
    none = candidate_features(HITS, "耳机坏了能修吗")  # intent model down: no intent evidence either way
    assert none[:, col["intent_agrees"]].tolist() == none[:, col["intent_disagrees"]].tolist() == [0.0, 0.0]


def test_round_trip_and_refusals():
    model = AnswerConfidence(tuple(np.linspace(-1, 1, len(FEATURES))), 0.5)
    again = AnswerConfidence.from_dict(model.to_dict())
    assert again == model
    assert again.probabilities(HITS, "运费") == model.probabilities(HITS, "运费")
    assert all(0 < p < 1 for p in model.probabilities(HITS, "运费")) and model.probabilities([], "x") == []
    with pytest.raises(ValueError, match="features"):
        AnswerConfidence.from_dict(model.to_dict() | {"features": ["cosine", "bm25"]})
    with pytest.raises(ValueError, match="finite"):
        AnswerConfidence.from_dict(model.to_dict() | {"bias": float("nan")})
    with pytest.raises(ValueError, match="malformed"):
        AnswerConfidence.from_dict({"weights": [1.0]})


def test_serving_side_needs_no_training_packages():
    import subprocess

    code = "import sys, services.faq.confidence, services.faq.thresholds; print('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
