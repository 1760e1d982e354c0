"""The FAQ admin service behind the HTTP routes (no HTTP here): create/update/delete, all-or-nothing import,
export and re-index, with writes serialised by one asyncio lock per process. `services/faq/admin.py` puts the
routes on it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, is_dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool

from services.faq.admin_errors import (
    EmbedderUnavailable,
    FaqExists,
    NotConfigured,
    ReindexRunning,
    UnderMaintenance,
)
from services.faq.admin_formats import ImportPlan, plan_import
from services.faq.admin_http import FaqAdminSettings
from services.faq.admin_schemas import ImportFormat, ImportMode, ImportReport, ReindexStatus
from services.faq.domain import (
    FaqEntry,
    FaqError,
    FaqNotFound,
    ReindexFailed,
    StoreUnavailable,
)
from services.faq.store import Embedder, FaqStore, embed_entries

log = logging.getLogger(__name__)
audit = logging.getLogger("services.faq.admin.audit")

READ_PAGE = 1000  # FAQs per store.list call when the whole knowledge base is read
Reindexer = Callable[[list[FaqEntry]], Any]
"""Rebuilds the store's collection from these entries (e.g. `milvus_reindexer`); returns a report."""
Bm25Refresher = Callable[[Callable[[], list[FaqEntry]]], Any]
"""Given a reader of the whole knowledge base, rebuilds the collection if its store needs it (reading only then);
returns a report, or None when nothing was needed."""


# ── the service behind the routes (no HTTP) ─────────────────────────────────────────────────────────


def _now() -> datetime:
    return datetime.now(UTC)


class FaqAdmin:
    """Serialised writes with a maintenance flag, over a `FaqStore` and an `Embedder`. One per event loop."""

    def __init__(
        self,
        store: FaqStore,
        embedder: Embedder,
        settings: FaqAdminSettings,
        reindexer: Reindexer | None = None,
        bm25_refresher: Bm25Refresher | None = None,
    ):
        self.store, self.embedder, self.settings, self.reindexer = store, embedder, settings, reindexer
        self.bm25_refresher = bm25_refresher
        self._refresh_task: asyncio.Task | None = None
        self._refresh_due = 0.0  # event-loop time of the next BM25 refresh
        self.maintenance = False
        self._lock = asyncio.Lock()
        self._reindex_task: asyncio.Task | None = None
        self._reindex = ReindexStatus(state="idle")
        self._reindex_error: Exception | None = None

    # plumbing

    async def exclusive(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Runs `fn` in a thread holding the write lock; refused while a re-index runs. A caller that goes
        away does not release the lock before `fn` has finished."""
        if self.maintenance:
            raise UnderMaintenance(
                "a re-index is rebuilding the knowledge base; writes are paused",
                self.settings.maintenance_retry_after_s,
            )

        async def locked() -> Any:
            async with self._lock:
                return await run_in_threadpool(fn, *args)

        task = asyncio.ensure_future(locked())
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        result = await asyncio.shield(task)
        if fn in (self.create, self.update, self.delete, self.import_file):
            self._schedule_bm25_refresh()
        return result

    def _schedule_bm25_refresh(self) -> None:
        """Debounced: `bm25_refresh_s` after the last write, rebuild the collection from its stored vectors
        under the write lock (writes wait, searches go on through the alias). Only for stores that need it
        (`MilvusFaqStore.bm25_needs_rebuild_after_writes`: milvus-lite's per-segment BM25 statistics).
        A later write moves the rebuild back; a running rebuild is never cancelled (its thread would go on
        without the lock)."""
        if self.bm25_refresher is None or self.settings.bm25_refresh_s <= 0:
            return
        loop = asyncio.get_running_loop()
        self._refresh_due = loop.time() + self.settings.bm25_refresh_s
        if self._refresh_task is None or self._refresh_task.done():
            self._refresh_task = asyncio.ensure_future(self._bm25_refresh())

    async def _bm25_refresh(self) -> None:
        """Runs until a rebuild succeeds after the last write. A failure (the store is down) is retried after
        `bm25_refresh_s`, doubling up to `bm25_retry_max_s`: FAQs written just before a crash must not stay out
        of keyword results until some later write."""
        loop = asyncio.get_running_loop()
        backoff = self.settings.bm25_refresh_s
        while True:
            while (wait := self._refresh_due - loop.time()) > 0:
                await asyncio.sleep(wait)
            if self.maintenance:
                return  # a re-index rebuilds everything anyway
            due = self._refresh_due
            try:
                async with self._lock:
                    report = await run_in_threadpool(self.bm25_refresher, self.read_all)
            except Exception as e:  # searches keep working on the old collection
                message = e.message if isinstance(e, FaqError) else f"{type(e).__name__}: {e}"
                log.warning(
                    "FAQ BM25 refresh failed, keyword ranking of new FAQs stays degraded; retrying in %.3g s: %s",
                    backoff,
                    message,
                )
                self._refresh_due = max(self._refresh_due, loop.time() + backoff)
                backoff = min(backoff * 2, self.settings.bm25_retry_max_s)
                continue
            if report is not None:
                log.info("FAQ BM25 statistics refreshed (collection rebuilt in one segment): %s", report)
            if self._refresh_due == due:
                return  # no write since this rebuild read the knowledge base
            backoff = self.settings.bm25_refresh_s

    def embed(self, entries: Sequence[FaqEntry]) -> list[np.ndarray]:
        try:
            return embed_entries(self.embedder, entries, self.settings.embed_batch_size)
        except FaqError:
            raise
        except Exception as e:
            log.exception("FAQ encoder failed on %d entries", len(entries))
            raise EmbedderUnavailable(
                f"the FAQ encoder failed ({type(e).__name__}); nothing was written"
            ) from e

    def embed_query(self, text: str) -> np.ndarray:
        try:
            return np.asarray(self.embedder.embed([text]), np.float32)[0]
        except Exception as e:
            log.exception("FAQ encoder failed on a search query")
            raise EmbedderUnavailable(f"the FAQ encoder failed ({type(e).__name__})") from e

    def read_all(self) -> list[FaqEntry]:
        out: list[FaqEntry] = []
        while True:
            page, total = self.store.list(len(out), READ_PAGE)
            out.extend(page)
            if not page or len(out) >= total:
                return out

    # single FAQs (run in a thread under the lock)

    def create(self, entry: FaqEntry) -> FaqEntry:
        try:
            self.store.get(entry.faq_id)
        except FaqNotFound:
            self.store.upsert([entry], self.embed([entry]))
            return entry
        raise FaqExists(f"faq {entry.faq_id} already exists; PUT /faqs/{entry.faq_id} replaces it")

    def update(self, entry: FaqEntry) -> FaqEntry:
        self.store.get(entry.faq_id)  # FaqNotFound
        self.store.upsert([entry], self.embed([entry]))
        return entry

    def delete(self, faq_id: str) -> None:
        if not self.store.delete([faq_id]):
            raise FaqNotFound(f"no FAQ {faq_id!r}")

    # import

    def import_file(self, rows: list, fmt: ImportFormat, mode: ImportMode, dry_run: bool) -> ImportReport:
        existing = self.read_all()
        plan = plan_import(rows, existing, mode)
        if not dry_run:
            vectors = self.embed(plan.writes)  # before anything is written
            self._apply(plan, vectors, {e.faq_id: e for e in existing})
        return ImportReport(
            format=fmt,
            mode=mode,
            dry_run=dry_run,
            rows=len(plan.entries),
            created=[e.faq_id for e in plan.create],
            updated=[e.faq_id for e in plan.update],
            unchanged=len(plan.unchanged),
            deleted=plan.delete,
            faqs=len(existing) + len(plan.create) - len(plan.delete) if dry_run else self.store.count(),
        )

    def _apply(self, plan: ImportPlan, vectors: list[np.ndarray], before: dict[str, FaqEntry]) -> None:
        try:
            if plan.delete:
                self.store.delete(plan.delete)
            if plan.writes:
                self.store.upsert(plan.writes, vectors)
        except Exception as e:
            reason = e.message if isinstance(e, FaqError) else f"{type(e).__name__}: {e}"
            log.error("FAQ import failed part-way (%s); rolling back", reason)
            try:
                self.store.delete([x.faq_id for x in plan.create])
                previous = [before[i] for i in [*(x.faq_id for x in plan.update), *plan.delete]]
                if previous:
                    self.store.upsert(previous, self.embed(previous))
            except Exception as again:
                log.exception("FAQ import rollback failed")
                raise StoreUnavailable(
                    f"the import failed part-way ({reason}) and could not be rolled back "
                    f"({type(again).__name__}); re-run the same import, it converges"
                ) from e
            if isinstance(e, FaqError):
                raise
            raise StoreUnavailable(f"the import failed and was rolled back: {reason}") from e

    # re-index

    async def start_reindex(self) -> asyncio.Task:
        if self.reindexer is None:
            raise NotConfigured("this deployment has no re-indexer for its store")
        if self._reindex_task is not None and not self._reindex_task.done():
            raise ReindexRunning(f"a re-index is running since {self._reindex.started_at:%Y-%m-%dT%H:%M:%SZ}")
        self.maintenance = True  # before waiting for the lock: later writes are refused, queued ones finish
        self._reindex = ReindexStatus(state="running", started_at=_now())
        self._reindex_error = None
        self._reindex_task = asyncio.create_task(self._run_reindex())
        return self._reindex_task

    async def _run_reindex(self) -> None:
        started = self._reindex.started_at
        try:
            async with self._lock:
                entries = await run_in_threadpool(self.read_all)
                report = await run_in_threadpool(self.reindexer, entries)
            body = asdict(report) if is_dataclass(report) else (dict(report) if report else None)
            self._reindex = ReindexStatus(
                state="succeeded", started_at=started, finished_at=_now(), report=body
            )
            audit.info("FAQ re-index succeeded: %s", body)
        except Exception as e:
            self._reindex_error = e
            message = e.message if isinstance(e, FaqError) else f"{type(e).__name__}: {e}"
            self._reindex = ReindexStatus(
                state="failed", started_at=started, finished_at=_now(), error=message
            )
            log.error("FAQ re-index failed: %s", message)
        finally:
            self.maintenance = False

    async def wait_reindex(self, task: asyncio.Task) -> ReindexStatus:
        await asyncio.shield(task)
        if self._reindex.state == "failed":
            e = self._reindex_error
            raise e if isinstance(e, FaqError) else ReindexFailed(self._reindex.error or "re-index failed")
        return self._reindex

    @property
    def reindex_status(self) -> ReindexStatus:
        return self._reindex
