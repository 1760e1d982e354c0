"""The FAQ store interface, the embedder interface, and `InMemoryFaqStore` (the fake for tests).

The store keeps one row per phrasing (the standard question at position 0, then the alternatives) and never
embeds: callers pass one L2-normalised vector per phrasing (`embed_entries` does it with an `Embedder`).

Contract (tests/test_faq_store_contract.py runs it against every implementation):
- `upsert` validates the whole batch first and writes nothing if any entry is refused: a phrasing that belongs
  to another FAQ (stored, or elsewhere in the batch) raises `DuplicateQuestion`; a faq_id twice in the batch or
  a vector of the wrong shape raises `InvalidFaq`. Upserting an existing faq_id replaces all its phrasings.
  (A backend failure part-way through a large batch can leave part of it written: upserts are idempotent,
  retry.) The duplicate check is check-then-write: concurrent writers in several processes must be serialised
  by the caller (the admin API).
- `search` answers FAQs, not phrasings: the best phrasing per FAQ, best first, scores normalised 0..1 as
  `services/faq/scoring.py` documents. Writes are visible to search as soon as `upsert`/`delete` return
  (on Milvus: at once for the writing process with the default Session consistency, within Milvus' time tick
  for other processes; `admin_consistency_level` Strong for duplicate checks).
- `list` orders by faq_id. `delete` ignores unknown ids and returns how many FAQs it removed.
"""

from __future__ import annotations

import math
import threading
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from services.faq.domain import (
    DuplicateQuestion,
    FaqEntry,
    FaqHit,
    FaqNotFound,
    InvalidFaq,
    InvalidQuery,
    phrasing_key,
)
from services.faq.query_text import search_text
from services.faq.scoring import Candidate, HybridRanker, bm25_score, dense_score, fuse, group_by_faq

SearchMode = Literal["hybrid", "dense", "bm25"]
SEARCH_MODES = ("hybrid", "dense", "bm25")
MAX_TOP_K = 100
MAX_PAGE = 1000


@runtime_checkable
class Embedder(Protocol):
    """Sentence encoder used by callers of the store (the `faq` model, or `testing.HashingEmbedder`)."""

    version: str  # identifies the model weights; part of the physical collection name at re-index
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """float32 [len(texts), dim], each row L2-normalised."""
        ...


class FaqStore(ABC):
    """A FAQ knowledge base that searches phrasings by dense vector, BM25 keywords, or both."""

    @abstractmethod
    def upsert(self, entries: Sequence[FaqEntry], vectors: Sequence[np.ndarray]) -> int:
        """Insert or replace FAQs. `vectors[i]` is [len(entries[i].phrasings), dim]. Returns rows written."""

    @abstractmethod
    def delete(self, faq_ids: Sequence[str]) -> int:
        """Remove FAQs (all their phrasings). Returns how many of the ids existed."""

    @abstractmethod
    def get(self, faq_id: str) -> FaqEntry:
        """The FAQ, or `FaqNotFound`."""

    @abstractmethod
    def list(
        self, offset: int = 0, limit: int = 50, category: str | None = None
    ) -> tuple[list[FaqEntry], int]:
        """A page of FAQs ordered by faq_id, and the total matching `category` (None = all)."""

    @abstractmethod
    def search(
        self,
        query_text: str | None,
        query_vector: np.ndarray | Sequence[float] | None,
        top_k: int = 5,
        mode: SearchMode = "hybrid",
    ) -> list[FaqHit]:
        """At most `top_k` FAQs, best first. dense needs `query_vector`, bm25 needs `query_text`, hybrid both
        (hybrid falls back to dense when the backend has no BM25 or the text has no searchable characters)."""

    @abstractmethod
    def count(self) -> int:
        """Number of FAQs (not phrasings)."""

    @abstractmethod
    def health(self) -> dict[str, Any]:
        """`ok`, `backend`, `collection`, `bm25_supported`, `rows` (phrasings), `faqs`; never raises."""

    def probe(self) -> str | None:
        """None when a search can run now, else why not; cheaper than `health()` (readiness calls it often).
        Never raises."""
        info = self.health()
        return None if info.get("ok") else str(info.get("error") or "store unhealthy")

    @abstractmethod
    def close(self) -> None:
        """Release connections (persisting what the backend buffers). Idempotent."""


# ── helpers shared by the implementations ───────────────────────────────────────────────────────────


def embed_entries(embedder: Embedder, entries: Sequence[FaqEntry], batch_size: int = 256) -> list[np.ndarray]:
    """One [phrasings, dim] float32 array per entry, embedding `batch_size` texts at a time."""
    texts = [p for e in entries for p in e.phrasings]
    parts = [
        np.asarray(embedder.embed(texts[i : i + batch_size]), np.float32)
        for i in range(0, len(texts), batch_size)
    ]
    flat = np.concatenate(parts) if parts else np.zeros((0, embedder.dim), np.float32)
    out, start = [], 0
    for e in entries:
        n = len(e.phrasings)
        out.append(flat[start : start + n])
        start += n
    return out


def check_batch(entries: Sequence[FaqEntry]) -> dict[str, str]:
    """Rules inside one batch; returns phrasing key → faq_id for every phrasing of the batch."""
    counts = Counter(e.faq_id for e in entries)
    repeated = sorted(i for i, n in counts.items() if n > 1)
    if repeated:
        raise InvalidFaq(f"faq_id repeated in one batch: {', '.join(repeated)}")
    owner: dict[str, str] = {}
    for e in entries:
        for p in e.phrasings:
            key = phrasing_key(p)
            if key in owner and owner[key] != e.faq_id:
                raise DuplicateQuestion(p, e.faq_id, owner[key])
            owner[key] = e.faq_id
    return owner


def check_vectors(entries: Sequence[FaqEntry], vectors: Sequence[np.ndarray], dim: int) -> list[np.ndarray]:
    if len(vectors) != len(entries):
        raise InvalidFaq(f"{len(entries)} entries but {len(vectors)} vector arrays")
    out = []
    for e, v in zip(entries, vectors, strict=True):
        v = np.asarray(v, dtype=np.float32)
        if v.ndim == 1 and len(e.phrasings) == 1:
            v = v[None, :]
        if v.shape != (len(e.phrasings), dim):
            raise InvalidFaq(
                f"faq {e.faq_id}: vectors {v.shape} != ({len(e.phrasings)}, {dim}) (phrasings, dim)"
            )
        if not np.isfinite(v).all():
            raise InvalidFaq(f"faq {e.faq_id}: vectors contain NaN or inf")
        out.append(v)
    return out


def check_query(
    query_text: str | None, query_vector: Any, top_k: int, mode: str, dim: int
) -> tuple[str, np.ndarray | None]:
    """Validates a search; returns the text to match (stripped, chat filler out: `query_text.search_text`) and
    the query vector as float32 [dim] (or None)."""
    if mode not in SEARCH_MODES:
        raise InvalidQuery(f"mode must be one of {', '.join(SEARCH_MODES)}, not {mode!r}")
    if not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
        raise InvalidQuery(f"top_k must be an integer in 1..{MAX_TOP_K}")
    text = search_text((query_text or "").strip())  # chat filler out: BM25 matches the question
    vec = None
    if query_vector is not None:
        vec = np.asarray(query_vector, dtype=np.float32).reshape(-1)
        if vec.shape != (dim,):
            raise InvalidQuery(f"query vector has {vec.size} values, the store's dim is {dim}")
        if not np.isfinite(vec).all() or not np.any(vec):
            raise InvalidQuery("query vector must be finite and non-zero")
    if mode in ("dense", "hybrid") and vec is None:
        raise InvalidQuery(f"mode {mode} needs a query vector")
    if mode == "bm25" and not text:
        raise InvalidQuery("mode bm25 needs a query text")
    return text, vec


def check_paging(offset: int, limit: int) -> None:
    if not isinstance(offset, int) or offset < 0:
        raise InvalidQuery("offset must be an integer >= 0")
    if not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise InvalidQuery(f"limit must be an integer in 1..{MAX_PAGE}")


def hit_from(c: Candidate, source: str) -> FaqHit:
    row = c.row
    return FaqHit(
        faq_id=row["faq_id"],
        question=row["question"],
        answer=row["answer"],
        category=row["category"],
        tags=list(row["tags"]),
        matched_text=row["text"],
        matched_standard=row["position"] == 0,
        score=c.score,
        source=source,
        cosine=None if c.cosine is None else float(c.cosine),
        bm25=None if c.bm25 is None else float(c.bm25),
    )


def char_bigrams(text: str) -> list[str]:
    """Keyword terms of the in-memory store: character bigrams of the phrasing key (a lone character alone)."""
    key = phrasing_key(text)
    if len(key) < 2:
        return [key] if key else []
    return [key[i : i + 2] for i in range(len(key) - 1)]


# ── the fake ────────────────────────────────────────────────────────────────────────────────────────


class InMemoryFaqStore(FaqStore):
    """Everything in dicts: exact cosine for dense, character-bigram BM25 (k1=1.2, b=0.75) for keywords,
    fusion and grouping from `scoring.py`. Thread-safe. For tests and for callers' unit tests."""

    K1, B = 1.2, 0.75

    def __init__(self, dim: int, ranker: HybridRanker | None = None, oversample: int = 5):
        self.dim = dim
        self.ranker = ranker or HybridRanker()
        self.oversample = oversample
        self._entries: dict[str, FaqEntry] = {}
        self._rows: list[dict[str, Any]] = []  # rebuilt on write; searches read a snapshot
        self._vectors = np.zeros((0, dim), np.float32)
        self._stats: tuple[int, float, Counter[str]] = (0, 0.0, Counter())  # rows, avg length, df
        self._lock = threading.Lock()
        self._closed = False

    def upsert(self, entries: Sequence[FaqEntry], vectors: Sequence[np.ndarray]) -> int:
        owner = check_batch(entries)
        vecs = check_vectors(entries, vectors, self.dim)
        texts = {phrasing_key(p): p for e in entries for p in e.phrasings}
        with self._lock:
            ids = {e.faq_id for e in entries}
            for row in self._rows:
                other = owner.get(row["key"])
                if other is not None and row["faq_id"] not in ids:
                    raise DuplicateQuestion(texts[row["key"]], other, row["faq_id"])
            kept = [(r, v) for r, v in zip(self._rows, self._vectors, strict=True) if r["faq_id"] not in ids]
            for e, v in zip(entries, vecs, strict=True):
                self._entries[e.faq_id] = e
                kept += [(self._row(e, i, p), v[i]) for i, p in enumerate(e.phrasings)]
            self._reindex(kept)
        return sum(len(v) for v in vecs)

    def delete(self, faq_ids: Sequence[str]) -> int:
        with self._lock:
            gone = {i for i in faq_ids if self._entries.pop(i, None) is not None}
            if gone:
                self._reindex(
                    [
                        (r, v)
                        for r, v in zip(self._rows, self._vectors, strict=True)
                        if r["faq_id"] not in gone
                    ]
                )
        return len(gone)

    def get(self, faq_id: str) -> FaqEntry:
        entry = self._entries.get(faq_id)
        if entry is None:
            raise FaqNotFound(f"no FAQ {faq_id!r}")
        return entry

    def list(
        self, offset: int = 0, limit: int = 50, category: str | None = None
    ) -> tuple[list[FaqEntry], int]:
        check_paging(offset, limit)
        with self._lock:
            chosen = [e for e in self._entries.values() if category is None or e.category == category]
        chosen.sort(key=lambda e: e.faq_id)
        return chosen[offset : offset + limit], len(chosen)

    def search(
        self,
        query_text: str | None,
        query_vector: np.ndarray | Sequence[float] | None,
        top_k: int = 5,
        mode: SearchMode = "hybrid",
    ) -> list[FaqHit]:
        text, vec = check_query(query_text, query_vector, top_k, mode, self.dim)
        if mode == "hybrid" and not char_bigrams(text):
            mode = "dense"
        with self._lock:
            rows, vectors, stats = self._rows, self._vectors, self._stats
        limit = top_k * self.oversample
        if mode == "bm25":
            ranked = self._bm25(rows, stats, text, limit)
        else:
            cos = self._cosines(vectors, vec)
            ranked = self._dense(rows, cos, limit)
            if mode == "hybrid":
                ranked = fuse(ranked, self._bm25(rows, stats, text, limit), self.ranker)
                index = {r["row_id"]: i for i, r in enumerate(rows)}
                for c in ranked:  # as MilvusFaqStore: cosine of every hybrid hit, no raw BM25
                    c.cosine, c.bm25 = float(cos[index[c.row["row_id"]]]), None
        return [hit_from(c, mode) for c in group_by_faq(ranked, top_k)]

    def count(self) -> int:
        return len(self._entries)

    def health(self) -> dict[str, Any]:
        return {
            "ok": not self._closed,
            "backend": "memory",
            "collection": "memory",
            "bm25_supported": True,
            "rows": len(self._rows),
            "faqs": len(self._entries),
            "dim": self.dim,
            "ranker": self.ranker.kind,
        }

    def close(self) -> None:
        self._closed = True

    # internals

    @staticmethod
    def _row(e: FaqEntry, position: int, text: str) -> dict[str, Any]:
        return {
            "row_id": f"{e.faq_id}#{position}",
            "faq_id": e.faq_id,
            "position": position,
            "text": text,
            "key": phrasing_key(text),
            "terms": Counter(char_bigrams(text)),
            "question": e.question,
            "answer": e.answer,
            "category": e.category,
            "tags": tuple(e.tags),
        }

    def _reindex(self, rows_vectors: list[tuple[dict[str, Any], np.ndarray]]) -> None:
        rows = [r for r, _ in rows_vectors]
        vectors = (
            np.stack([v for _, v in rows_vectors]) if rows_vectors else np.zeros((0, self.dim), np.float32)
        )
        df: Counter[str] = Counter()
        for r in rows:
            df.update(r["terms"].keys())
        avgdl = sum(sum(r["terms"].values()) for r in rows) / len(rows) if rows else 0.0
        self._rows, self._vectors, self._stats = rows, vectors, (len(rows), avgdl, df)

    @staticmethod
    def _cosines(vectors: np.ndarray, vec: np.ndarray) -> np.ndarray:
        norms = np.linalg.norm(vectors, axis=1) * float(np.linalg.norm(vec))
        return (vectors @ vec) / np.maximum(norms, 1e-12)

    @staticmethod
    def _dense(rows, cos, limit) -> list[Candidate]:
        order = sorted(range(len(rows)), key=lambda i: (-cos[i], rows[i]["faq_id"], rows[i]["position"]))[
            :limit
        ]
        return [Candidate(rows[i], dense_score(cos[i]), cosine=float(cos[i])) for i in order]

    def _bm25(self, rows, stats, text, limit) -> list[Candidate]:
        n, avgdl, df = stats
        terms = set(char_bigrams(text))
        scored = []
        for r in rows:
            tf = r["terms"]
            dl = sum(tf.values())
            s = 0.0
            for t in terms:
                f = tf.get(t, 0)
                if f:
                    idf = math.log((n - df[t] + 0.5) / (df[t] + 0.5) + 1.0)
                    s += idf * f * (self.K1 + 1) / (f + self.K1 * (1 - self.B + self.B * dl / avgdl))
            if s > 0:
                scored.append((s, r))
        scored.sort(key=lambda x: (-x[0], x[1]["faq_id"], x[1]["position"]))
        return [Candidate(r, bm25_score(s), bm25=s) for s, r in scored[:limit]]
