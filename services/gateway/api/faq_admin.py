"""Mounting the FAQ admin API (`services/faq/admin.py`) on the gateway at `/admin/faq`.

The admin router is built once, when the app is; the store and the encoder behind it are the knowledge base's
current ones (opened, and possibly re-indexed, only once the workers' encoder version is known). `KbStore` and
`KbEmbedder` delegate to them at call time: before the knowledge base is ready, writes and searches answer
503 (`store_unavailable` / `embedder_unavailable`). Authentication is the gateway's own (`X-API-Key` or Bearer,
the `admin` scope: `Edge.admin_dependency()`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from services.faq.domain import FaqEntry, FaqHit, StoreUnavailable
from services.faq.store import FaqStore
from services.gateway.core.knowledge import KnowledgeBase


class KbStore(FaqStore):
    """The knowledge base's store, whichever it is now."""

    def __init__(self, kb: KnowledgeBase):
        self.kb = kb

    def _store(self) -> FaqStore:
        if self.kb.store is None:
            raise StoreUnavailable(f"the knowledge base is not open yet: {self.kb.error}")
        return self.kb.store

    def upsert(self, entries: Sequence[FaqEntry], vectors: Sequence[np.ndarray]) -> int:
        return self._store().upsert(entries, vectors)

    def delete(self, faq_ids: Sequence[str]) -> int:
        return self._store().delete(faq_ids)

    def get(self, faq_id: str) -> FaqEntry:
        return self._store().get(faq_id)

    def list(self, offset: int = 0, limit: int = 50, category: str | None = None):
        return self._store().list(offset, limit, category)

    def search(self, query_text, query_vector, top_k: int = 5, mode="hybrid") -> list[FaqHit]:
        return self._store().search(query_text, query_vector, top_k, mode)

    def count(self) -> int:
        return self._store().count()

    def health(self) -> dict[str, Any]:
        if self.kb.store is None:
            return {"ok": False, "error": self.kb.error}
        return self.kb.store.health()

    def probe(self) -> str | None:
        if self.kb.store is None:
            return self.kb.error or "the knowledge base is not open yet"
        return self.kb.store.probe()

    def close(self) -> None:  # the knowledge base owns the store
        pass


class KbEmbedder:
    """The encoder version the knowledge base is indexed with."""

    def __init__(self, kb: KnowledgeBase):
        self.kb = kb

    def _embedder(self):
        if self.kb.embedder is None:
            raise RuntimeError(f"the FAQ encoder is not known yet: {self.kb.error}")
        return self.kb.embedder

    @property
    def version(self) -> str:
        return self.kb.embedder.version if self.kb.embedder else "unknown"

    @property
    def dim(self) -> int:
        return self.kb.embedder.dim if self.kb.embedder else 0

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self._embedder().embed(texts)


def kb_reindexer(kb: KnowledgeBase) -> Callable[[list[FaqEntry]], Any] | None:
    """`POST /admin/faq/reindex` rebuilds the collection with the current encoder (Milvus stores only)."""
    factory = kb._reindexer
    if factory is None:
        return None

    def run(entries: list[FaqEntry]):
        if kb.embedder is None:
            raise StoreUnavailable(f"the FAQ encoder is not known yet: {kb.error}")
        return factory(kb.embedder)(entries)

    return run


def kb_bm25_refresher(kb: KnowledgeBase) -> Callable[[Callable[[], list[FaqEntry]]], Any] | None:
    """After admin writes: rebuild the collection from its stored vectors (no encoder calls) when the store
    needs it for BM25 to rank new FAQs right (milvus-lite; `MilvusFaqStore.bm25_needs_rebuild_after_writes`).
    Other stores cost nothing: the knowledge base is read only when a rebuild is due."""
    factory = kb._reindexer
    if factory is None:
        return None

    def run(read_entries: Callable[[], list[FaqEntry]]):
        store = kb.store
        if kb.embedder is None or not getattr(store, "bm25_needs_rebuild_after_writes", False):
            return None
        from services.faq.reindex import StoredVectors

        return factory(StoredVectors(store, kb.embedder.version))(read_entries())

    return run
