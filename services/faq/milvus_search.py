"""The three searches of `MilvusFaqStore` (dense, BM25, hybrid), as ranked phrasing candidates.

Scores are normalised here as `scoring.py` documents. Hybrid runs server-side with `hybrid_search` and the
configured ranker (RRFRanker by default); the dense vectors of the candidates come back with the hits so each
gets its exact cosine for thresholds.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pymilvus import AnnSearchRequest, MilvusClient, RRFRanker, WeightedRanker

from services.faq.milvus_schema import HIT_FIELDS, hit_row
from services.faq.scoring import Candidate, HybridRanker, bm25_score, dense_score

DENSE = {"metric_type": "COSINE"}
BM25 = {"metric_type": "BM25"}


def run_search(
    client: MilvusClient,
    collection: str,
    mode: str,
    words: str,
    vec: np.ndarray | None,
    limit: int,
    ranker: HybridRanker,
    **kw: Any,
) -> list[Candidate]:
    """Best-first phrasing candidates. `words`: the keyword text (`keyword_text`); `kw`: consistency, timeout."""
    if mode == "dense":
        res = client.search(
            collection, [vec.tolist()], anns_field="dense", limit=limit, output_fields=HIT_FIELDS,
            search_params=DENSE, **kw,
        )  # fmt: skip
        return [
            Candidate(hit_row(h), dense_score(h["distance"]), cosine=float(h["distance"])) for h in res[0]
        ]
    if mode == "bm25":
        res = client.search(
            collection, [words], anns_field="sparse", limit=limit, output_fields=HIT_FIELDS,
            search_params=BM25, **kw,
        )  # fmt: skip
        # milvus-lite reports BM25 as a negative distance, Milvus as a positive score
        raw = [abs(float(h["distance"])) for h in res[0]]
        return [Candidate(hit_row(h), bm25_score(b), bm25=b) for h, b in zip(res[0], raw, strict=True)]
    requests = [
        AnnSearchRequest(data=[vec.tolist()], anns_field="dense", param=DENSE, limit=limit),
        AnnSearchRequest(data=[words], anns_field="sparse", param=BM25, limit=limit),
    ]
    if ranker.kind == "rrf":
        fusion = RRFRanker(ranker.rrf_k)
    else:
        fusion = WeightedRanker(ranker.dense_weight, ranker.bm25_weight)
    res = client.hybrid_search(
        collection, requests, ranker=fusion, limit=limit, output_fields=[*HIT_FIELDS, "dense"], **kw
    )
    out = []
    for h in res[0]:
        v = np.asarray(h["entity"]["dense"], np.float32)
        cos = float(v @ vec / max(float(np.linalg.norm(v) * np.linalg.norm(vec)), 1e-12))
        out.append(Candidate(hit_row(h), ranker.normalise(abs(float(h["distance"]))), cosine=cos))
    out.sort(key=lambda c: (-c.score, c.row["faq_id"], c.row["position"]))
    return out
