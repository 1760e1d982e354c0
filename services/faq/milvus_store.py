"""`MilvusFaqStore`: the FAQ store on Milvus through `pymilvus.MilvusClient`.

One `uri` covers the three deployments:
- `./faq.db` (any path ending in .db): embedded milvus-lite, in this process. One process per file (file
  lock); the in-process server is released when the last store on that file closes.
- `http://127.0.0.1:19530` from `milvus-lite server --data-dir DIR --host 127.0.0.1 --port 19530`: several
  processes share one milvus-lite.
- a real Milvus (`http(s)://host:19530`, `token="user:password"` or an API key).

Layout (one row per phrasing, every row carrying its FAQ's answer): see `milvus_schema.py`.

BM25 support is detected when a collection is created: the BM25 function is tried first; a server that
refuses it (Milvus < 2.5) or silently drops it gets a dense-only collection, a WARNING log, and
`health()["bm25_supported"] == False`. Then hybrid searches run dense only and `mode="bm25"` raises
`ModeNotSupported`.

Aliases: the store is opened on an alias (`collection_alias`); the physical collection behind it is
`<alias>_<embedder version>_<UTC timestamp>`, created with the alias on first use. Every call goes through
the alias, so `reindex` can point it at a new collection while searches keep running (milvus-lite 3.2.2
supports create/alter/describe/list/drop alias, persisted in the data dir's aliases.json). A search that
races with the drop of the previous collection is retried once.

Consistency (real Milvus; milvus-lite is always read-your-writes): searches use `consistency_level`, default
Session — the process that wrote sees its write in its next search, other processes once the query nodes
have consumed it (Milvus' time tick, 200 ms by default), and a search costs ~3 ms. Strong would make every
search wait for the next time tick (~200 ms each on Milvus 2.3.5 standalone, `make bench-faq`). The admin
reads that decide writes (duplicate checks, get, list, counts) use `admin_consistency_level`, default Strong,
so a check never misses another process's committed write.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from services.faq.domain import (
    FAQ_ID_PATTERN,
    MAX_ALTERNATIVES,
    DuplicateQuestion,
    FaqEntry,
    FaqError,
    FaqHit,
    FaqNotFound,
    InvalidQuery,
    ModeNotSupported,
    StoreUnavailable,
    phrasing_key,
)
from services.faq.milvus_conn import MilvusConnection, ReloadingClient, backend_call, is_missing
from services.faq.milvus_schema import (
    ENTRY_FIELDS,
    PROP_EMBEDDER,
    create_faq_collection,
    dense_dims,
    entry_from_rows,
    has_bm25,
    in_list,
    keyword_text,
    physical_name,
    row_id,
    to_rows,
)
from services.faq.milvus_search import SearchCache, bump, revision, run_search
from services.faq.scoring import HybridRanker, group_by_faq
from services.faq.store import (
    FaqStore,
    SearchMode,
    check_batch,
    check_paging,
    check_query,
    check_vectors,
    hit_from,
)

log = logging.getLogger(__name__)

QUERY_LIMIT = 16384  # Milvus' cap on offset + limit
WRITE_CHUNK = 500
FILTER_CHUNK = 200


def _bumps_revision(write):
    """After the write (done or failed half-way), cached searches at this uri are stale (`milvus_search`)."""

    @functools.wraps(write)
    def wrapper(self, *args, **kwargs):
        try:
            return write(self, *args, **kwargs)
        finally:
            bump(self.uri)

    return wrapper


class MilvusFaqStore(FaqStore):
    def __init__(
        self,
        uri: str = "./faq.db",
        collection_alias: str = "faq",
        embedder_dim: int = 128,
        token: str | None = None,
        *,
        physical_collection: str | None = None,
        embedder_version: str = "unknown",
        create_if_missing: bool = True,
        bm25: bool | None = None,
        jieba_words: Sequence[str] = (),
        ranker: HybridRanker | None = None,
        oversample: int = 5,
        consistency_level: str = "Session",
        admin_consistency_level: str = "Strong",
        dense_index_type: str = "AUTOINDEX",
        timeout_s: float = 10.0,
        search_cache_size: int = 0,
        search_cache_ttl_s: float = 10.0,
    ):
        """`physical_collection` opens (creating it if missing) that exact collection instead of the alias:
        what `reindex` builds. `bm25`: None = detect, False = dense only, True = refuse to run without.
        `oversample`: phrasing rows fetched per FAQ wanted, before grouping. `search_cache_size` (0 = off) /
        `search_cache_ttl_s`: recent search answers by knowledge-base revision (`milvus_search.SearchCache`)."""
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", collection_alias):
            raise StoreUnavailable(f"collection alias {collection_alias!r}: letters, digits and _ only")
        self.uri, self.alias, self.dim = uri, collection_alias, embedder_dim
        self.embedder_version = embedder_version
        self.ranker = ranker or HybridRanker()
        self.oversample = max(1, oversample)
        self._want_bm25, self._jieba_words = bm25, tuple(jieba_words)
        self._consistency, self._index_type, self._timeout = consistency_level, dense_index_type, timeout_s
        self._read_kw = {"consistency_level": consistency_level, "timeout": timeout_s}
        self._admin_consistency = admin_consistency_level
        self._closed, self._name = False, None
        self._via_alias, self.bm25_supported = False, False
        self._reload_lock = threading.Lock()
        self._cache = SearchCache(search_cache_size, search_cache_ttl_s)
        self._conn = MilvusConnection(uri, token, timeout_s)
        self._client = ReloadingClient(self._conn.client, self._reload)
        self.backend, self.server_version = self._conn.backend, self._conn.server_version
        try:
            self._open(physical_collection, create_if_missing)
        except BaseException:
            self.close()
            raise

    # ── FaqStore ────────────────────────────────────────────────────────────────────────────────────

    @_bumps_revision
    def upsert(self, entries: Sequence[FaqEntry], vectors: Sequence[np.ndarray]) -> int:
        owner = check_batch(entries)
        vecs = check_vectors(entries, vectors, self.dim)
        if not entries:
            return 0
        self._check_duplicates(entries, owner)
        rows = to_rows(entries, vecs)
        with backend_call("upsert"):
            for i in range(0, len(rows), WRITE_CHUNK):
                self._client.upsert(self._name, rows[i : i + WRITE_CHUNK], timeout=self._timeout)
            # rows beyond the new phrasing count (the entry got shorter) go after the new ones are in
            for i in range(0, len(entries), FILTER_CHUNK):
                part = entries[i : i + FILTER_CHUNK]
                keep = [row_id(e.faq_id, p) for e in part for p in range(len(e.phrasings))]
                ids = [e.faq_id for e in part]
                self._client.delete(
                    self._name, filter=f"faq_id in {in_list(ids)} and id not in {in_list(keep)}"
                )
        return len(rows)

    @_bumps_revision
    def bulk_insert(self, entries: Sequence[FaqEntry], vectors: Sequence[np.ndarray]) -> int:
        """Insert into an empty collection being built (`reindex`): no duplicate lookups, no stale deletes.
        The caller has checked the whole knowledge base with `check_batch`."""
        rows = to_rows(entries, check_vectors(entries, vectors, self.dim))
        with backend_call("insert"):
            for i in range(0, len(rows), WRITE_CHUNK):
                self._client.insert(self._name, rows[i : i + WRITE_CHUNK], timeout=self._timeout)
        return len(rows)

    @_bumps_revision
    def delete(self, faq_ids: Sequence[str]) -> int:
        ids = [i for i in dict.fromkeys(faq_ids) if isinstance(i, str) and re.match(FAQ_ID_PATTERN, i)]
        gone = 0
        with backend_call("delete"):
            for i in range(0, len(ids), FILTER_CHUNK):
                part = ids[i : i + FILTER_CHUNK]
                found = self._query(f"faq_id in {in_list(part)} and position == 0", ["faq_id"])
                if found:
                    self._client.delete(self._name, filter=f"faq_id in {in_list(part)}")
                    gone += len({r["faq_id"] for r in found})
        return gone

    def get(self, faq_id: str) -> FaqEntry:
        if not isinstance(faq_id, str) or not re.match(FAQ_ID_PATTERN, faq_id):
            raise FaqNotFound(f"no FAQ {faq_id!r}")
        with backend_call("get"):
            rows = self._query(f"faq_id == {json.dumps(faq_id)}", ENTRY_FIELDS, limit=MAX_ALTERNATIVES + 1)
        if not rows:
            raise FaqNotFound(f"no FAQ {faq_id!r}")
        return entry_from_rows(rows)

    def list(
        self, offset: int = 0, limit: int = 50, category: str | None = None
    ) -> tuple[list[FaqEntry], int]:
        check_paging(offset, limit)
        expr = "position == 0"
        if category is not None:
            if re.search(r'["\\\x00-\x1f]', category):
                raise InvalidQuery("category contains a quote, backslash or control character")
            expr += f" and category == {json.dumps(category, ensure_ascii=False)}"
        with backend_call("list"):
            ids = sorted({r["faq_id"] for r in self._query_all(expr, ["faq_id"])})
            page = ids[offset : offset + limit]
            rows = self._query(
                f"faq_id in {in_list(page)}", ENTRY_FIELDS, limit=len(page) * (MAX_ALTERNATIVES + 1)
            )
        by_id: dict[str, list[dict]] = {}
        for r in rows:
            by_id.setdefault(r["faq_id"], []).append(r)
        return [entry_from_rows(by_id[i]) for i in page if i in by_id], len(ids)

    def search(
        self,
        query_text: str | None,
        query_vector: np.ndarray | Sequence[float] | None,
        top_k: int = 5,
        mode: SearchMode = "hybrid",
    ) -> list[FaqHit]:
        text, vec = check_query(query_text, query_vector, top_k, mode, self.dim)
        if mode == "bm25" and not self.bm25_supported:
            raise ModeNotSupported(f"{self.backend} {self.server_version}: no BM25 on this collection")
        words = keyword_text(text)
        if mode == "hybrid" and (not self.bm25_supported or not words):
            mode = "dense"
        if mode == "bm25" and not words:
            return []
        limit = min(top_k * self.oversample, QUERY_LIMIT)
        key = (
            revision(self.uri),
            self._name,
            mode,
            top_k,
            limit,
            words,
            b"" if vec is None else vec.tobytes(),
        )
        if (cached := self._cache.get(key)) is not None:
            return cached
        for attempt in (1, 2):
            try:
                ranked = run_search(
                    self._client, self._name, mode, words, vec, limit, self.ranker, **self._read_kw
                )
                break
            except FaqError:
                raise
            except Exception as e:
                if attempt == 1 and is_missing(e):  # the alias moved to a new collection under this call
                    time.sleep(0.05)
                    continue
                raise StoreUnavailable(f"milvus search failed: {e}") from e
        hits = [hit_from(c, mode) for c in group_by_faq(ranked, top_k)]
        self._cache.put(key, hits)
        return hits

    def count(self) -> int:
        with backend_call("count"):
            return self._count("position == 0")

    def row_count(self) -> int:
        """Phrasing rows (what `reindex` verifies)."""
        with backend_call("count"):
            return self._count("")

    def stored_vectors(self) -> dict[str, np.ndarray]:
        """Every phrasing's stored dense vector, by phrasing text: lets a collection be rebuilt without the
        encoder (`reindex.StoredVectors`)."""
        with backend_call("read vectors"):
            rows = self._query_all("position >= 0", ["text", "dense"])
        return {r["text"]: np.asarray(r["dense"], np.float32) for r in rows}

    @property
    def bm25_needs_rebuild_after_writes(self) -> bool:
        """milvus-lite 3.2.2 scores BM25 with per-segment statistics: rows written after the first segment was
        sealed (any flush or reopen) get IDFs computed over their own small segment and rank far below equal
        matches (a new FAQ's exact question scored 2.3 against 23 for an old one). Rebuilding the collection
        in one segment (`reindex` with `StoredVectors`) restores the ranking. Real Milvus keeps collection-wide
        statistics and needs nothing."""
        return self.backend in ("milvus-lite", "milvus-lite-server") and self.bm25_supported

    def health(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "ok": False,
            "backend": self.backend,
            "server_version": self.server_version,
            "alias": self.alias if self._via_alias else None,
            "collection": None,
            "bm25_supported": self.bm25_supported,
            "rows": None,
            "faqs": None,
            "dim": self.dim,
            "embedder_version": None,
            "ranker": self.ranker.kind if self.bm25_supported else None,
            "consistency_level": self._consistency,
            "admin_consistency_level": self._admin_consistency,
        }
        try:
            info["collection"] = self.physical_collection
            info["embedder_version"] = self._properties().get(PROP_EMBEDDER)
            info["rows"], info["faqs"] = self.row_count(), self.count()
            info["ok"] = True
        except Exception as e:
            info["error"] = e.message if isinstance(e, FaqError) else str(e)
        return info

    def probe(self) -> str | None:
        """None when a search can run now, else why not. One cheap call (the load state of the collection behind
        the alias); a collection a restarted server released is loaded again here, so readiness and recovery
        need no search traffic."""
        try:
            target = self.physical_collection
            with backend_call("get_load_state"):
                loaded = _is_loaded(self._client.get_load_state(target))
            if not loaded:
                self._reload()
            return None
        except FaqError as e:
            return e.message

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            target = self.physical_collection if self._name else None
        except FaqError:
            target = None
        self._conn.close(flush=target)

    # ── what reindex needs ──────────────────────────────────────────────────────────────────────────

    @property
    def physical_collection(self) -> str:
        """The collection behind the alias right now."""
        if not self._via_alias:
            return self._name
        with backend_call("describe_alias"):
            return self._client.describe_alias(self._name)["collection_name"]

    def alias_target(self, alias: str) -> str | None:
        """The collection `alias` points at, or None when there is no such alias."""
        with backend_call("list_aliases"):
            if alias not in self._client.list_aliases().get("aliases", []):
                return None
            return self._client.describe_alias(alias)["collection_name"]

    def alias_targets(self) -> dict[str, str]:
        """Every alias in the database and the collection it points at."""
        with backend_call("list_aliases"):
            aliases = self._client.list_aliases().get("aliases", [])
            return {a: self._client.describe_alias(a)["collection_name"] for a in aliases}

    def list_collections(self) -> list[str]:
        """Every physical collection in the database (to find collections a crashed re-index left)."""
        with backend_call("list_collections"):
            return sorted(self._client.list_collections())

    def has_collection(self, name: str) -> bool:
        with backend_call("has_collection"):
            return bool(self._client.has_collection(name))

    @_bumps_revision
    def point_alias(self, alias: str) -> None:
        """Point `alias` at this store's physical collection (create or alter)."""
        target = self.physical_collection
        with backend_call("alias"):
            if alias in self._client.list_aliases().get("aliases", []):
                self._client.alter_alias(target, alias)
            else:
                self._client.create_alias(target, alias)

    @_bumps_revision
    def drop_collection(self, name: str) -> None:
        with backend_call("drop_collection"):
            self._client.drop_collection(name)

    def flush(self) -> None:
        with backend_call("flush"):
            self._client.flush(self.physical_collection)

    # ── internals ───────────────────────────────────────────────────────────────────────────────────

    def _reload(self) -> None:
        """Load the collection behind the alias again: a restarted milvus-lite server keeps no load state (every
        search then fails with "in state 'released'"), and Milvus loses it when its meta store did. Serialised;
        a caller that waited finds it loaded and does nothing."""
        with self._reload_lock:
            target = self.physical_collection
            with backend_call("load_collection"):
                if _is_loaded(self._client.get_load_state(target)):
                    return
                log.warning("FAQ store: collection %s is not loaded (server restarted?): loading it", target)
                self._client.load_collection(target, timeout=self._timeout)
            log.info("FAQ store: collection %s loaded again", target)

    def _open(self, physical: str | None, create: bool) -> None:
        if physical is not None:
            self._name = physical
            if not self.has_collection(physical):
                self._create(physical)
        elif self.alias_target(self.alias) is not None:
            self._name, self._via_alias = self.alias, True
        elif self.has_collection(self.alias):
            log.info(
                "%s is a collection, not an alias: opened directly, reindex cannot switch it", self.alias
            )
            self._name = self.alias
        elif create:
            name = physical_name(self.alias, self.embedder_version)
            self._create(name)
            with backend_call("create_alias"):
                self._client.create_alias(name, self.alias)
            self._name, self._via_alias = self.alias, True
        else:
            raise StoreUnavailable(f"no collection or alias {self.alias!r} at {self.uri}")
        target = self.physical_collection
        with backend_call("describe_collection"):
            desc = self._client.describe_collection(target)
            dims = dense_dims(desc)
            if dims != [self.dim]:
                raise StoreUnavailable(
                    f"collection {target} has dense dim {dims or 'none'}, embedder_dim is {self.dim}"
                )
            self.bm25_supported = has_bm25(desc)
            if self._want_bm25 and not self.bm25_supported:
                raise StoreUnavailable(f"collection {target} has no BM25 function and bm25=True was asked")
            self._client.load_collection(target, timeout=self._timeout)

    def _create(self, name: str) -> None:
        if self._want_bm25 is not False:
            try:
                self._create_with(name, bm25=True)
                if has_bm25(self._client.describe_collection(name)):
                    return
                self._client.drop_collection(name)  # server ignored the function (Milvus 2.4)
                reason = "the server dropped the BM25 function"
            except Exception as e:
                with backend_call("list_collections"):  # unreachable -> StoreUnavailable, not a fallback
                    if self._client.has_collection(name):
                        self._client.drop_collection(name)
                reason = str(e)
            if self._want_bm25:
                raise StoreUnavailable(f"BM25 required but not supported by {self.server_version}: {reason}")
            log.warning(
                "FAQ store: BM25 not supported by %s %s (%s); collection %s is dense-only, hybrid searches run dense",
                self.backend,
                self.server_version,
                reason,
                name,
            )
        with backend_call("create_collection"):
            self._create_with(name, bm25=False)

    def _create_with(self, name: str, bm25: bool) -> None:
        create_faq_collection(
            self._client,
            name,
            dim=self.dim,
            bm25=bm25,
            jieba_words=self._jieba_words,
            index_type=self._index_type,
            consistency_level=self._consistency,
            embedder_version=self.embedder_version,
            timeout=self._timeout,
        )

    def _check_duplicates(self, entries: Sequence[FaqEntry], owner: dict[str, str]) -> None:
        batch = {e.faq_id for e in entries}
        texts = {phrasing_key(p): p for e in entries for p in e.phrasings}
        keys = list(owner)
        with backend_call("duplicate check"):
            for i in range(0, len(keys), FILTER_CHUNK):
                part = keys[i : i + FILTER_CHUNK]
                for r in self._query(
                    f"text_key in {in_list(part)}", ["faq_id", "text_key"], limit=len(part) * 4
                ):
                    if r["faq_id"] not in batch:
                        raise DuplicateQuestion(texts[r["text_key"]], owner[r["text_key"]], r["faq_id"])

    def _query(self, expr: str, fields: list[str], limit: int = QUERY_LIMIT) -> list[dict[str, Any]]:
        return list(
            self._client.query(
                self._name,
                filter=expr,
                output_fields=fields,
                limit=min(limit, QUERY_LIMIT),
                consistency_level=self._admin_consistency,
                timeout=self._timeout,
            )
        )

    def _query_all(self, expr: str, fields: list[str]) -> list[dict[str, Any]]:
        rows = self._query(expr, fields)
        if len(rows) < QUERY_LIMIT:
            return rows
        it = self._client.query_iterator(
            self._name,
            batch_size=1000,
            filter=expr,
            output_fields=fields,
            consistency_level=self._admin_consistency,
        )
        rows = []
        try:
            while batch := it.next():
                rows.extend(batch)
        finally:
            it.close()
        return rows

    def _count(self, expr: str) -> int:
        res = self._client.query(
            self._name,
            filter=expr,
            output_fields=["count(*)"],
            consistency_level=self._admin_consistency,
            timeout=self._timeout,
        )
        return int(res[0]["count(*)"])

    def _properties(self) -> dict[str, Any]:
        with backend_call("describe_collection"):
            return dict(self._client.describe_collection(self.physical_collection).get("properties") or {})


def _is_loaded(state: dict[str, Any]) -> bool:
    value = state.get("state")
    return getattr(value, "name", str(value)) == "Loaded"
