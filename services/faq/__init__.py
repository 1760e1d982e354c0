"""FAQ knowledge base: domain types, the store interface and its implementations, zero-downtime re-index.

| module | what |
|---|---|
| `domain.py` | `FaqEntry`, `FaqHit`, errors, `phrasing_key`, `read_faq_jsonl` |
| `store.py` | `FaqStore` interface, `Embedder` protocol, `embed_entries`, `InMemoryFaqStore` (fake) |
| `scoring.py` | score normalisation, hybrid fusion (RRF / weighted), grouping by FAQ |
| `milvus_store.py` | `MilvusFaqStore` (milvus-lite file, milvus-lite server, Milvus) |
| `milvus_schema.py`, `milvus_search.py`, `milvus_conn.py` | its collection layout, searches, connection |
| `reindex.py` | `reindex()`: new collection, verify, switch alias, drop old |
| `settings.py` | `FaqSettings` (`KEFU_FAQ_*`) |
| `admin.py` | the admin API router the gateway mounts (`create_admin_router`); `admin_service.py` (the writes, import, re-index behind it), `admin_http.py` (settings, errors → HTTP, admin-key auth), `admin_errors.py` (its errors, no HTTP), `admin_schemas.py` (bodies), `admin_formats.py` (JSONL / CSV import and export) |
| `embedders.py` | `LocalEmbedder`: the exported `faq` encoder in-process (evaluation, thresholds, offline re-index) |
| `evaluate.py` | `make eval-faq`: dense vs BM25 vs hybrid, R@1/5/10 and MRR |
| `thresholds.py` | `make faq-thresholds`: answer / suggest thresholds stored with the encoder version |
| `testing.py` | deterministic embedders and the demo knowledge base, for tests |

`milvus_store`/`reindex` import pymilvus; the rest does not.
"""

from services.faq.domain import (
    DuplicateQuestion,
    FaqEntry,
    FaqError,
    FaqHit,
    FaqNotFound,
    InvalidFaq,
    InvalidQuery,
    ModeNotSupported,
    ReindexFailed,
    StoreUnavailable,
)
from services.faq.scoring import HybridRanker
from services.faq.store import Embedder, FaqStore, InMemoryFaqStore, embed_entries

__all__ = [
    "DuplicateQuestion",
    "Embedder",
    "FaqEntry",
    "FaqError",
    "FaqHit",
    "FaqNotFound",
    "FaqStore",
    "HybridRanker",
    "InMemoryFaqStore",
    "InvalidFaq",
    "InvalidQuery",
    "ModeNotSupported",
    "ReindexFailed",
    "StoreUnavailable",
    "embed_entries",
]
