"""Answer confidence: the probability that an FAQ hit is the right answer to the customer's message.

    model = AnswerConfidence.from_dict(stored)                  # coefficients from thresholds.json
    probs = model.probabilities(hits, "运费咋算", "物流查询", 0.93)  # one P(right) per hit, in the hits' order

A raw cosine is a poor answer score here: the encoder's cosines are compressed near 1 (an unrelated question
often scores 0.8), so one threshold on it either refuses most questions or answers wrong ones. The confidence is
a logistic regression over several signals of each candidate FAQ, fitted offline (`services/faq/thresholds.py`,
scikit-learn) and applied here with its stored coefficients only (numpy, no training dependencies):

| feature | what |
|---|---|
| cosine | cosine(query, the FAQ's best phrasing): the dense similarity |
| margin | its cosine minus the best cosine of the other candidates (negative for all but the top) |
| hybrid | the store's hybrid score (RRF of the dense and BM25 ranks, 1.0 = first in both): the BM25 evidence |
| first | 1 for the store's first hit |
| intent_agrees | the intent model's confidence when its label is the FAQ's category, else 0 |
| intent_disagrees | its confidence when the label differs from a non-empty category, else 0 |
| overlap_phrasing | share of the message's character bigrams found in the matched phrasing |
| overlap_faq | share of its character bigrams found in the FAQ's question, matched phrasing and answer |
| overlap_faq_chars | the same for single characters |

The overlaps are computed here from the hit's texts (no model call), on the message without its chat filler
(`query_text.search_text`: 亲，/ 请问 / 呀~ / !! would count as unmatched words); they catch what a compressed cosine
misses: "耳机坏了能修吗" shares 修 / 维修 with the answer of "商品坏了怎么申请保修或维修？", while an in-domain
question the knowledge base does not cover shares few words with any answer.

Without an intent prediction (intent model down) both intent features are 0. The features need the search
mode the model was fitted with (`search_mode`, hybrid by default): `hybrid` is the fused score of that mode.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.faq.domain import FaqHit, phrasing_key
from services.faq.query_text import search_text

FEATURES = (
    "cosine",
    "margin",
    "hybrid",
    "first",
    "intent_agrees",
    "intent_disagrees",
    "overlap_phrasing",
    "overlap_faq",
    "overlap_faq_chars",
)


def _grams(text: str, n: int) -> set[str]:
    key = phrasing_key(text)
    return {key[i : i + n] for i in range(len(key) - n + 1)} or {key}


def _recall(query: set[str], text: str, n: int) -> float:
    return len(query & _grams(text, n)) / len(query) if query else 0.0


def candidate_features(
    hits: Sequence[FaqHit], query: str, intent_label: str | None = None, intent_confidence: float = 0.0
) -> np.ndarray:
    """[len(hits), len(FEATURES)] float64, one row per hit in the store's order (best first)."""
    cos = np.array([h.cosine if h.cosine is not None else h.score for h in hits], np.float64)
    query = search_text(query)  # the words of the question, without 亲，/ 请问 / 呀~ / !! around it
    bigrams, chars = _grams(query, 2), _grams(query, 1)
    out = np.zeros((len(hits), len(FEATURES)))
    for i, hit in enumerate(hits):
        others = np.delete(cos, i)
        out[i, 0] = cos[i]
        out[i, 1] = cos[i] - (others.max() if len(others) else 0.0)
        out[i, 2] = hit.score
        out[i, 3] = 1.0 if i == 0 else 0.0
        if intent_label is not None and hit.category:
            agrees = intent_label == hit.category
            out[i, 4] = intent_confidence if agrees else 0.0
            out[i, 5] = 0.0 if agrees else intent_confidence
        faq_text = f"{hit.question}\n{hit.matched_text}\n{hit.answer}"
        out[i, 6] = _recall(bigrams, hit.matched_text, 2)
        out[i, 7] = _recall(bigrams, faq_text, 2)
        out[i, 8] = _recall(chars, faq_text, 1)
    return out


@dataclass(frozen=True)
class AnswerConfidence:
    """P(hit is right) = sigmoid(bias + weights · features), coefficients on the raw feature scale."""

    weights: tuple[float, ...]
    bias: float
    features: tuple[str, ...] = FEATURES
    search_mode: str = "hybrid"

    def __post_init__(self) -> None:
        if tuple(self.features) != FEATURES:
            raise ValueError(f"confidence features {list(self.features)} are not this gateway's {FEATURES}")
        if len(self.weights) != len(FEATURES) or not all(
            math.isfinite(w) for w in (*self.weights, self.bias)
        ):
            raise ValueError(f"confidence needs {len(FEATURES)} finite weights and a finite bias")

    def probabilities(
        self,
        hits: Sequence[FaqHit],
        query: str,
        intent_label: str | None = None,
        intent_confidence: float = 0.0,
    ) -> list[float]:
        if not hits:
            return []
        z = (
            candidate_features(hits, query, intent_label, intent_confidence) @ np.asarray(self.weights)
            + self.bias
        )
        return [float(p) for p in 1.0 / (1.0 + np.exp(-z))]

    def to_dict(self) -> dict[str, Any]:
        return {
            "features": list(self.features),
            "weights": list(self.weights),
            "bias": self.bias,
            "search_mode": self.search_mode,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AnswerConfidence:
        """From thresholds.json; a malformed entry raises ValueError."""
        try:
            return cls(
                weights=tuple(float(w) for w in data["weights"]),
                bias=float(data["bias"]),
                features=tuple(data["features"]),
                search_mode=str(data.get("search_mode", "hybrid")),
            )
        except (KeyError, TypeError) as e:
            raise ValueError(f"malformed answer confidence: {e}") from None
