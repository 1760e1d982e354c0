"""FAQ store settings: one object, every field documented, each overridable by a KEFU_FAQ_* variable."""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class FaqSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KEFU_FAQ_", extra="forbid")

    uri: str = Field(
        "./faq.db",
        description="a .db path (embedded milvus-lite, one process), http://127.0.0.1:PORT of `milvus-lite "
        "server`, or a Milvus URI",
    )
    token: SecretStr = Field(
        SecretStr(""), description="Milvus token (user:password or API key); empty for milvus-lite"
    )
    collection_alias: str = Field("faq", description="alias the store reads and writes; reindex switches it")
    embedder_dim: int = Field(128, ge=1, description="dimension of the FAQ encoder's embedding")
    embedder_version: str = Field(
        "unknown", description="FAQ encoder version, recorded on collections this process creates"
    )
    bm25: Literal["auto", "on", "off"] = Field(
        "auto",
        description="auto = BM25 when the server supports it; on = refuse to run without; off = dense only",
    )
    jieba_words: str = Field(
        "",
        description="comma-separated extra jieba words (product terms) for collections this process creates",
    )
    ranker: Literal["rrf", "weighted"] = Field(
        "rrf", description="hybrid fusion (see services/faq/scoring.py)"
    )
    rrf_k: int = Field(60, ge=1, description="RRF constant: score = sum 1/(k + rank)")
    dense_weight: float = Field(0.5, ge=0, description="weighted ranker: weight of the dense route")
    bm25_weight: float = Field(0.5, ge=0, description="weighted ranker: weight of the BM25 route")
    oversample: int = Field(
        5, ge=1, description="phrasing rows fetched per FAQ asked for, before grouping by FAQ"
    )
    consistency_level: Literal["Strong", "Bounded", "Session", "Eventually"] = Field(
        "Session",
        description="read consistency of searches on a real Milvus: Session = this process sees its own writes "
        "at once, others within Milvus' time tick (~200 ms), ~3 ms a search; Strong waits for the next time tick "
        "on every search (~200 ms on Milvus 2.3.5 standalone)",
    )
    write_check_consistency_level: Literal["Strong", "Bounded", "Session", "Eventually"] = Field(
        "Strong",
        # KEFU_FAQ_ADMIN_CONSISTENCY_LEVEL, its old name, read like a FaqAdminSettings (KEFU_FAQ_ADMIN_*) field
        validation_alias=AliasChoices(
            "write_check_consistency_level",
            "KEFU_FAQ_WRITE_CHECK_CONSISTENCY_LEVEL",
            "KEFU_FAQ_ADMIN_CONSISTENCY_LEVEL",
        ),
        description="consistency of the reads that decide writes (duplicate checks, get, list, counts); "
        "KEFU_FAQ_ADMIN_CONSISTENCY_LEVEL, its old name, is still read",
    )
    dense_index_type: str = Field("AUTOINDEX", description="index of the dense field (FLAT = exact)")
    timeout_s: float = Field(10.0, gt=0, description="per-call timeout towards Milvus")
    search_cache_size: int = Field(
        4096,
        ge=0,
        description="recent search answers kept in this process, keyed by knowledge-base revision (a write "
        "through this process is seen at once); 0 = every search goes to Milvus",
    )
    search_cache_ttl_s: float = Field(
        10.0,
        gt=0,
        description="how long a cached search answer lives: writes by other processes show within this",
    )

    def open_store(self):
        """The `MilvusFaqStore` these settings describe (opening the alias, creating it on first use)."""
        from services.faq.milvus_store import MilvusFaqStore
        from services.faq.scoring import HybridRanker

        return MilvusFaqStore(
            self.uri,
            self.collection_alias,
            self.embedder_dim,
            self.token.get_secret_value() or None,
            embedder_version=self.embedder_version,
            bm25={"auto": None, "on": True, "off": False}[self.bm25],
            jieba_words=[w.strip() for w in self.jieba_words.split(",") if w.strip()],
            ranker=HybridRanker(self.ranker, self.rrf_k, self.dense_weight, self.bm25_weight),
            oversample=self.oversample,
            consistency_level=self.consistency_level,
            admin_consistency_level=self.write_check_consistency_level,
            dense_index_type=self.dense_index_type,
            timeout_s=self.timeout_s,
            search_cache_size=self.search_cache_size,
            search_cache_ttl_s=self.search_cache_ttl_s,
        )
