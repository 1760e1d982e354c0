"""Score normalisation, rank fusion and grouping by FAQ, shared by every store so hits mean the same thing.

Search works on phrasings (one row per standard question or alternative) and answers with FAQs: rows are
ranked, then grouped by `faq_id` keeping the best-ranked phrasing of each FAQ (`group_by_faq`).

Normalised `score` (0..1, higher is better) per source:

| source | score | notes |
|---|---|---|
| dense  | max(cosine, 0) | vectors are L2-normalised, so cosine == inner product; negative = unrelated |
| bm25   | 2/π · atan(bm25) | the map Milvus uses for BM25 in its WeightedRanker; raw value kept in `FaqHit.bm25` |
| hybrid, RRF | Σ_routes 1/(k + rank) ÷ (routes/(k + 1)) | 1.0 = first in both dense and BM25 lists; rank based |
| hybrid, weighted | Σ w_i · norm_i ÷ Σ w_i | norm_i = per-query min-max of route i (milvus-lite) |

The hybrid score says how the candidates compare *for this query*, not how good the best one is: a query
nobody can answer still has a hit at 1.0. Thresholds (answer / refuse / hand over) therefore use
`FaqHit.cosine`, which every dense and hybrid hit carries (the cosine of the matched phrasing), possibly with
the hybrid score as a tie-breaker.

Why RRF is the default hybrid ranker: it is parameter-free and computed identically by milvus-lite and
Milvus (1/(k + rank), k = 60), so a ranking tuned locally is the ranking served in production. Milvus'
WeightedRanker normalises each route with arctan / (1+cos)/2 maps while milvus-lite uses per-query min-max,
so weighted fusion ranks differently on the two backends; it stays available (`HybridRanker(kind="weighted")`)
for knowledge bases where exact product terms must outweigh a weak encoder. Known limit of RRF: when the
dense encoder carries no signal for a query, its (noise) ranking still gets equal say; `mode="bm25"` is exact.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

RankerKind = Literal["rrf", "weighted"]


@dataclass(frozen=True)
class HybridRanker:
    """How dense and BM25 candidates are fused in hybrid mode."""

    kind: RankerKind = "rrf"
    rrf_k: int = 60
    dense_weight: float = 0.5
    bm25_weight: float = 0.5

    def __post_init__(self) -> None:
        if self.kind not in ("rrf", "weighted"):
            raise ValueError(f"ranker kind must be 'rrf' or 'weighted', not {self.kind!r}")
        if self.rrf_k < 1:
            raise ValueError("rrf_k must be >= 1")
        if self.dense_weight < 0 or self.bm25_weight < 0 or self.dense_weight + self.bm25_weight <= 0:
            raise ValueError("weights must be >= 0 and not both 0")

    def normalise(self, fused: float, routes: int = 2) -> float:
        """The fused value of the backend mapped to 0..1 (1 = best possible)."""
        if self.kind == "rrf":
            best = routes / (self.rrf_k + 1)
        else:
            best = self.dense_weight + self.bm25_weight
        return clip01(fused / best)


def clip01(x: float) -> float:
    if math.isnan(x):
        return 0.0
    return min(1.0, max(0.0, float(x)))


def dense_score(cosine: float) -> float:
    return clip01(cosine)


def bm25_score(raw: float) -> float:
    return clip01(2.0 / math.pi * math.atan(max(0.0, raw)))


@dataclass
class Candidate:
    """One phrasing row found by a route, with what it scored there. `row` holds the stored fields."""

    row: dict[str, Any]
    score: float  # normalised score for the hit (0..1)
    cosine: float | None = None
    bm25: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def fuse(
    dense: Sequence[Candidate],
    bm25: Sequence[Candidate],
    ranker: HybridRanker,
    key: str = "row_id",
) -> list[Candidate]:
    """Client-side fusion (the in-memory store; Milvus fuses server-side with the same formulas).

    `dense` and `bm25` are each sorted best first and carry raw route values in `cosine` / `bm25`.
    Rows missing from a route contribute nothing for it, as in Milvus.
    """
    fused: dict[Any, float] = {}
    rows: dict[Any, Candidate] = {}
    routes: list[tuple[Sequence[Candidate], float, str]] = [
        (dense, ranker.dense_weight, "cosine"),
        (bm25, ranker.bm25_weight, "bm25"),
    ]
    for cands, weight, attr in routes:
        values = [getattr(c, attr) or 0.0 for c in cands]
        lo, hi = (min(values), max(values)) if values else (0.0, 0.0)
        for rank, (c, v) in enumerate(zip(cands, values, strict=True)):
            rid = c.row[key]
            if ranker.kind == "rrf":
                part = 1.0 / (ranker.rrf_k + rank + 1)
            else:
                part = weight * ((v - lo) / (hi - lo) if hi > lo else 1.0)
            fused[rid] = fused.get(rid, 0.0) + part
            if rid not in rows:
                rows[rid] = Candidate(row=c.row, score=0.0, cosine=c.cosine, bm25=c.bm25)
            else:
                prev = rows[rid]
                prev.cosine = prev.cosine if prev.cosine is not None else c.cosine
                prev.bm25 = prev.bm25 if prev.bm25 is not None else c.bm25
    out = []
    for rid, value in fused.items():
        c = rows[rid]
        c.score = ranker.normalise(value)
        c.extra["fused"] = value
        out.append(c)
    out.sort(key=lambda c: (-c.score, c.row["faq_id"], c.row["position"]))
    return out


def group_by_faq(candidates: Iterable[Candidate], top_k: int) -> list[Candidate]:
    """Best phrasing per FAQ, best first, at most `top_k` FAQs. Input must be sorted best first."""
    best: dict[str, Candidate] = {}
    for c in candidates:
        fid = c.row["faq_id"]
        if fid not in best:
            best[fid] = c
            if len(best) >= top_k:
                break
    return sorted(best.values(), key=lambda c: (-c.score, c.row["faq_id"], c.row["position"]))
