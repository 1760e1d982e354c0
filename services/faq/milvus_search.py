"""The three searches of `MilvusFaqStore` (dense, BM25, hybrid), as ranked phrasing candidates.

Scores are normalised here as `scoring.py` documents. Hybrid runs server-side with `hybrid_search` and the
configured ranker (RRFRanker by default); the dense vectors of the candidates come back with the hits so each
gets its exact cosine for thresholds.

`SearchCache` keeps recent search answers, keyed by the knowledge base's revision (`revision(uri)`, moved by
every write and alias switch any store object of this process makes at that uri: `bump(uri)`, called after the
write) plus everything the answer depends on (collection, mode, top_k, keyword text, the query vector's
bytes). A write through this process is therefore visible to the next search at once; a search that began
before the write is filed under the old revision and never read. Writes made by another process (another
gateway replica, `python -m services.faq.admin`) are seen when the entry expires (`ttl_s`). Why: on a small
knowledge base milvus-lite spends ~5-8 ms of CPU per hybrid search whatever the collection size (request
handling, the BM25 analyser, the two routes and the fusion), the biggest single cost of a chat turn on two
cores, and customer questions repeat.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
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


_revisions: dict[str, int] = {}
_revisions_lock = threading.Lock()


def revision(uri: str) -> int:
    """This process's revision of the knowledge base at `uri` (0 until its first write here)."""
    return _revisions.get(uri, 0)


def bump(uri: str) -> None:
    """A write (or alias switch) at `uri` finished: every cached search of it is stale."""
    with _revisions_lock:
        _revisions[uri] = _revisions.get(uri, 0) + 1


class SearchCache:
    """A bounded LRU of search answers with a time to live; thread-safe (searches run in threads).
    `size` 0 = off."""

    def __init__(self, size: int, ttl_s: float, clock: Callable[[], float] = time.monotonic):
        self.size, self.ttl_s, self.clock = max(0, size), ttl_s, clock
        self._entries: OrderedDict[Hashable, tuple[float, list]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: Hashable) -> list | None:
        if not self.size:
            return None
        with self._lock:
            found = self._entries.get(key)
            if found is None or self.clock() - found[0] >= self.ttl_s:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return list(found[1])

    def put(self, key: Hashable, value: list) -> None:
        if not self.size:
            return
        with self._lock:
            self._entries[key] = (self.clock(), list(value))
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
