"""Zero-downtime re-index: build a new collection beside the serving one, then switch the alias.

    report = reindex(factory, read_faq_jsonl("faq.jsonl"), embedder, alias="faq")

1. Checks the whole knowledge base (entry rules, one FAQ per phrasing) before creating anything.
2. Creates `<alias>_<embedder version>_<UTC timestamp>` through `store_factory(name)`, embeds and inserts in
   batches, and verifies rows == phrasings and FAQs == entries.
3. Points the alias at it (create or alter), waits `drop_grace_s` for searches already routed to the old
   collection, then drops the old one.

Searches through the alias keep working throughout: before the switch they read the old collection, after it
the new one (MilvusFaqStore retries once a search that races with the drop). Any failure before the switch
drops the new collection and leaves the alias where it was (`ReindexFailed`). A failure to drop the old
collection after the switch is logged and reported (`ReindexReport.left_behind`), not raised.

Writes made through the alias while a re-index runs land in the old collection and are lost at the switch:
the admin path must pause writes (or re-apply them) during a re-index; `source_entries` is the source of truth.
Two re-indexes of one alias must not run at once. A new embedder with a different `dim` needs its callers to
switch at the same moment (compare `health()["embedder_version"]`).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from services.faq.domain import FaqEntry, FaqError, ReindexFailed
from services.faq.milvus_store import MilvusFaqStore, physical_name
from services.faq.store import Embedder, check_batch, embed_entries

log = logging.getLogger(__name__)

ORPHAN_MIN_AGE_S = 600.0  # an unaliased collection of this alias older than this is an orphan, never a build
_PHYSICAL = re.compile(r"^[A-Za-z0-9_]+_(?P<stamp>\d{17})$")  # physical_name(): ..._<yyyymmddHHMMSSmmm>

StoreFactory = Callable[[str], MilvusFaqStore]
"""`factory(collection_name)` opens (creating) that physical collection, with `embedder_dim=embedder.dim`,
e.g. `lambda name: MilvusFaqStore(uri, "faq", embedder.dim, physical_collection=name,
embedder_version=embedder.version, jieba_words=kb_terms(entries))`."""


@dataclass(frozen=True)
class ReindexReport:
    alias: str
    collection: str  # the new physical collection, now behind the alias
    previous: str | None  # what the alias pointed at before (dropped unless in left_behind)
    faqs: int
    rows: int
    embedder_version: str
    seconds: float
    left_behind: list[str] = field(default_factory=list)
    orphans_dropped: list[str] = field(default_factory=list)  # collections earlier interrupted rebuilds left


def reindex(
    store_factory: StoreFactory,
    source_entries: Iterable[FaqEntry],
    embedder: Embedder,
    alias: str,
    *,
    batch_size: int = 256,
    drop_grace_s: float = 1.0,
    orphan_min_age_s: float = ORPHAN_MIN_AGE_S,
) -> ReindexReport:
    """Rebuild `alias` from `source_entries` with `embedder`; see the module docstring for the guarantees."""
    started = time.monotonic()
    entries = list(source_entries)
    check_batch(entries)  # InvalidFaq / DuplicateQuestion before anything is created
    expected_rows = sum(len(e.phrasings) for e in entries)
    name = physical_name(alias, embedder.version)
    store: MilvusFaqStore | None = None
    switched = False
    try:
        store = store_factory(name)
        if store.physical_collection != name:
            raise ReindexFailed(f"store_factory opened {store.physical_collection}, not {name}")
        if store.has_collection(alias) and store.alias_target(alias) is None:
            raise ReindexFailed(f"{alias} is a collection, not an alias: it cannot be switched")
        if store.row_count():
            raise ReindexFailed(f"new collection {name} is not empty")
        for i in range(0, len(entries), batch_size):
            batch = entries[i : i + batch_size]
            store.bulk_insert(batch, embed_entries(embedder, batch, batch_size))
        store.flush()
        rows, faqs = store.row_count(), store.count()
        if rows != expected_rows or faqs != len(entries):
            raise ReindexFailed(
                f"{name} holds {rows} rows / {faqs} FAQs, expected {expected_rows} / {len(entries)}"
            )
        orphans = drop_orphans(store, alias, keep=name, min_age_s=orphan_min_age_s)
        previous = store.alias_target(alias)
        store.point_alias(alias)
        switched = True
        log.info("FAQ alias %s -> %s (was %s): %d FAQs, %d rows", alias, name, previous, faqs, rows)
    except ReindexFailed:
        _abandon(store, alias, name, switched)
        raise
    except Exception as e:
        _abandon(store, alias, name, switched)
        reason = e.message if isinstance(e, FaqError) else f"{type(e).__name__}: {e}"
        raise ReindexFailed(f"re-index of {alias} failed, {alias} unchanged: {reason}") from e
    except BaseException:
        _abandon(store, alias, name, switched)
        raise
    left_behind = []
    try:
        if previous is not None and previous != name:
            time.sleep(drop_grace_s)
            try:
                store.drop_collection(previous)
            except FaqError as e:
                log.warning("re-index of %s: could not drop previous collection %s: %s", alias, previous, e)
                left_behind.append(previous)
    finally:
        store.close()
    return ReindexReport(
        alias,
        name,
        previous,
        faqs,
        rows,
        embedder.version,
        round(time.monotonic() - started, 3),
        left_behind,
        orphans,
    )


def drop_orphans(
    store: MilvusFaqStore,
    alias: str,
    keep: str,
    min_age_s: float = ORPHAN_MIN_AGE_S,
    now: float | None = None,
) -> list[str]:
    """Drops the collections that rebuilds of `alias` left behind: named `<alias>_<version>_<UTC stamp>`
    (`physical_name`), behind no alias, not `keep`, and created more than `min_age_s` ago (a rebuild running
    elsewhere right now is younger). A process killed mid-rebuild (or a failed drop of the previous collection)
    leaves one on disk each time; without this they pile up. Failures are logged, never raised."""
    now = time.time() if now is None else now
    try:
        targets = set(store.alias_targets().values())
        names = store.list_collections()
    except FaqError as e:
        log.warning("re-index of %s: could not list collections to drop orphans: %s", alias, e.message)
        return []
    dropped = []
    for name in names:
        match = _PHYSICAL.match(name)
        if not match or not name.startswith(f"{alias}_") or name == keep or name in targets:
            continue
        try:
            created = datetime.strptime(match["stamp"], "%Y%m%d%H%M%S%f").replace(tzinfo=UTC).timestamp()
        except ValueError:
            continue
        if now - created < min_age_s:
            continue
        try:
            store.drop_collection(name)
        except FaqError as e:
            log.warning("re-index of %s: could not drop orphan collection %s: %s", alias, name, e.message)
            continue
        log.warning(
            "re-index of %s: dropped orphan collection %s (left by an interrupted rebuild)", alias, name
        )
        dropped.append(name)
    return dropped


def _abandon(store: MilvusFaqStore | None, alias: str, name: str, switched: bool) -> None:
    """Drop the half-built collection unless the alias already points at it (a switch that reported failure)."""
    if store is None:
        return
    try:
        if not switched and store.alias_target(alias) != name:
            store.drop_collection(name)
    except Exception as e:
        log.warning("re-index of %s: could not drop the unfinished collection %s: %s", alias, name, e)
    finally:
        store.close()


class StoredVectors:
    """An `Embedder` that answers with the vectors a store already holds (same encoder version), so `reindex`
    can rebuild a collection without re-embedding: what the milvus-lite BM25 refresh does
    (`MilvusFaqStore.bm25_needs_rebuild_after_writes`)."""

    def __init__(self, store: MilvusFaqStore, version: str):
        self._vectors = store.stored_vectors()
        self.version, self.dim = version, store.dim

    def embed(self, texts) -> np.ndarray:
        missing = [t for t in texts if t not in self._vectors]
        if missing:
            raise ReindexFailed(f"{len(missing)} phrasings have no stored vector (first: {missing[0]!r})")
        return np.stack([self._vectors[t] for t in texts]) if texts else np.zeros((0, self.dim), np.float32)
