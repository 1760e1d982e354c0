"""FAQ admin API: a FastAPI router the gateway mounts under `/admin/faq` (the routes; the service behind them is
`admin_service.py`, errors → HTTP, auth and settings `admin_http.py`, errors `admin_errors.py`, bodies `admin_schemas.py`, import / export
formats `admin_formats.py`).

    router = create_admin_router(store, embedder, auth=require_admin_key({sha256_hex_of_key}))
    app.include_router(router, prefix="/admin/faq")

| route | success | errors |
|---|---|---|
| `POST /faqs` | 201 the FAQ (+ Location) | 400 invalid, 409 `faq_exists` / `duplicate_question`, 503 maintenance |
| `GET /faqs?offset=&limit=&category=` | 200 `{items, total, offset, limit}` (limit 1..200) | 400 |
| `GET /faqs/{faq_id}` | 200 the FAQ | 404 |
| `PUT /faqs/{faq_id}` | 200 the FAQ (replaces every field) | 400, 404, 409 `duplicate_question`, 503 |
| `DELETE /faqs/{faq_id}` | 204 | 404, 503 |
| `POST /search` `{text, top_k, mode}` | 200 `{mode, hits}` | 400 (bad mode, bm25 on a store without it) |
| `POST /import?format=jsonl\\|csv&mode=upsert\\|replace_all&dry_run=` | 200 import report | 400 `import_rejected` with `rows: [{row, error}]` (nothing applied), 413, 503 |
| `GET /export?format=jsonl\\|csv` | 200 the whole knowledge base, streamed (`faq.jsonl` format) | |
| `POST /reindex?wait=` | 202 running (200 with the report when `wait=true`) | 409 already running, 501 no re-indexer, 500 failed |
| `GET /reindex` | 200 state of the last re-index | |
| `GET /health` | 200 store health + maintenance state | |

Every route needs the `auth` dependency (401 without valid credentials, 403 without the admin scope).
Every error has the gateway's uniform body `{"error": {"code", "message", "request_id"}}` (import errors add
`rows`); the request id is the `X-Request-ID` header when it is a sane token, else a new uuid4, and every
response carries it back in `X-Request-ID`. This module alone maps errors to status codes (`STATUS`).

Writes (create, update, delete, import, re-index) are serialised by one asyncio lock in this process and run
in threads; the store's duplicate check is check-then-write, so one admin process per knowledge base. While a
re-index rebuilds the collection, writes answer 503 with Retry-After (they would land in the collection being
replaced and be lost); reads and searches keep working. Writes are visible to search when they return.

Imports check every record before touching the store (rules, ids and phrasings repeated in the file, and in
`upsert` mode phrasings owned by stored FAQs the file does not carry) and either apply all of it or answer
400 with every bad row. Records equal to the stored FAQ are not rewritten. `replace_all` deletes stored FAQs
missing from the file (an empty file is refused). A store failure part-way through is rolled back (previous
versions re-embedded and re-written); if even that fails the answer is 503 saying so: re-run the import, it
converges.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from services.faq.admin_formats import charset_of, decode, detect_format, export_chunks, parse_import
from services.faq.admin_http import FaqAdminSettings, _bulk_body, _route_class, _who, require_admin_key
from services.faq.admin_schemas import (
    FaqIn,
    FaqOut,
    FaqPage,
    FaqUpdate,
    ImportReport,
    ReindexStatus,
    SearchRequest,
    SearchResponse,
)
from services.faq.admin_service import Bm25Refresher, FaqAdmin, Reindexer, _now
from services.faq.domain import FaqEntry, InvalidFaq
from services.faq.store import Embedder, FaqStore

log = logging.getLogger(__name__)
__all__ = [
    "FaqAdminSettings",
    "create_admin_router",
    "milvus_reindexer",
    "require_admin_key",
]  # the admin API

audit = logging.getLogger("services.faq.admin.audit")

# ── the router ──────────────────────────────────────────────────────────────────────────────────────


def create_admin_router(
    store: FaqStore,
    embedder: Embedder,
    auth: Callable[..., Any],
    *,
    settings: FaqAdminSettings | None = None,
    reindexer: Reindexer | None = None,
    bm25_refresher: Bm25Refresher | None = None,
) -> APIRouter:
    """The admin routes over `store`, embedding with `embedder`; `auth` is a FastAPI dependency that raises
    `Unauthorized` / `Forbidden` (e.g. `require_admin_key(...)`). `reindexer` enables `POST /reindex`
    (`milvus_reindexer` for a `MilvusFaqStore`). `bm25_refresher` rebuilds the collection from its stored
    vectors after writes (milvus-lite's per-segment BM25 statistics; see `FaqAdminSettings.bm25_refresh_s`).
    The `FaqAdmin` behind the routes is `router.faq_admin`."""
    settings = settings or FaqAdminSettings()
    admin = FaqAdmin(store, embedder, settings, reindexer, bm25_refresher)
    router = APIRouter(dependencies=[Depends(auth)], route_class=_route_class(settings))
    router.faq_admin = admin  # type: ignore[attr-defined]

    @router.post("/faqs", status_code=201, response_model=FaqOut)
    async def create_faq(body: FaqIn, request: Request, response: Response):
        entry = await admin.exclusive(admin.create, body.entry())
        response.headers["Location"] = str(request.url_for("get_faq", faq_id=entry.faq_id))
        audit.info("create %s by %s (request %s)", entry.faq_id, _who(request), request.state.request_id)
        return FaqOut.of(entry)

    @router.get("/faqs", response_model=FaqPage)
    async def list_faqs(
        offset: int = Query(0, ge=0, le=10_000_000),
        limit: int = Query(min(settings.default_page, settings.page_limit), ge=1, le=settings.page_limit),
        category: str | None = Query(None, min_length=1, max_length=64),
    ):
        page, total = await run_in_threadpool(store.list, offset, limit, category)
        return FaqPage(items=[FaqOut.of(e) for e in page], total=total, offset=offset, limit=limit)

    @router.get("/faqs/{faq_id}", response_model=FaqOut)
    async def get_faq(faq_id: str):
        return FaqOut.of(await run_in_threadpool(store.get, faq_id))

    @router.put("/faqs/{faq_id}", response_model=FaqOut)
    async def update_faq(faq_id: str, body: FaqUpdate, request: Request):
        if body.faq_id is not None and body.faq_id != faq_id:
            raise InvalidFaq(f"faq_id: the body's {body.faq_id!r} differs from the path's {faq_id!r}")
        entry = await admin.exclusive(admin.update, body.entry(faq_id))
        audit.info("update %s by %s (request %s)", faq_id, _who(request), request.state.request_id)
        return FaqOut.of(entry)

    @router.delete("/faqs/{faq_id}", status_code=204)
    async def delete_faq(faq_id: str, request: Request):
        await admin.exclusive(admin.delete, faq_id)
        audit.info("delete %s by %s (request %s)", faq_id, _who(request), request.state.request_id)
        return Response(status_code=204)

    @router.post("/search", response_model=SearchResponse)
    async def search(body: SearchRequest):
        vector = None if body.mode == "bm25" else await run_in_threadpool(admin.embed_query, body.text)
        hits = await run_in_threadpool(store.search, body.text, vector, body.top_k, body.mode)
        return SearchResponse(mode=body.mode, hits=hits)

    @router.post("/import", response_model=ImportReport)
    @_bulk_body
    async def import_faqs(
        request: Request,
        format: Literal["jsonl", "csv"] | None = Query(None, description="default: from Content-Type"),
        mode: Literal["upsert", "replace_all"] = Query("upsert"),
        dry_run: bool = Query(False, description="check and report, change nothing"),
    ):
        content_type = request.headers.get("content-type")
        fmt = detect_format(format, content_type)
        charset = charset_of(content_type)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
        text = decode(bytes(body), charset)
        rows = await run_in_threadpool(parse_import, text, fmt)
        report = await admin.exclusive(admin.import_file, rows, fmt, mode, dry_run)
        audit.info(
            "import %s %s%s: %d created, %d updated, %d deleted by %s (request %s)",
            fmt, mode, " (dry run)" if dry_run else "", len(report.created), len(report.updated),
            len(report.deleted), _who(request), request.state.request_id,
        )  # fmt: skip
        return report

    @router.get("/export")
    async def export_faqs(format: Literal["jsonl", "csv"] = Query("jsonl")):
        if admin.maintenance:  # the collection behind the alias is stable until the switch, and equal after
            entries = await run_in_threadpool(admin.read_all)
        else:  # a consistent snapshot: no write between two pages
            entries = await admin.exclusive(admin.read_all)
        stamp = _now().strftime("%Y%m%dT%H%M%SZ")
        media = "text/csv; charset=utf-8" if format == "csv" else "application/x-ndjson; charset=utf-8"
        return StreamingResponse(
            export_chunks(entries, format),
            media_type=media,
            headers={
                "Content-Disposition": f'attachment; filename="faq-{stamp}.{format}"',
                "X-FAQ-Count": str(len(entries)),
            },
        )

    @router.post("/reindex", response_model=ReindexStatus)
    async def start_reindex(request: Request, response: Response, wait: bool = Query(False)):
        task = await admin.start_reindex()
        audit.info("re-index started by %s (request %s)", _who(request), request.state.request_id)
        if wait:
            return await admin.wait_reindex(task)
        response.status_code = 202
        response.headers["Location"] = str(request.url_for("reindex_status"))
        return admin.reindex_status

    @router.get("/reindex", response_model=ReindexStatus)
    async def reindex_status():
        return admin.reindex_status

    @router.get("/health")
    async def health():
        info = await run_in_threadpool(store.health)
        return {**info, "maintenance": admin.maintenance, "reindex": admin.reindex_status.state}

    return router


def milvus_reindexer(faq_settings: Any, embedder: Embedder, *, drop_grace_s: float = 1.0) -> Reindexer:
    """A `Reindexer` that rebuilds `faq_settings`' alias (a `FaqSettings`) with `services/faq/reindex.py`."""
    from services.faq.domain import kb_terms
    from services.faq.milvus_store import MilvusFaqStore
    from services.faq.reindex import reindex
    from services.faq.scoring import HybridRanker

    s = faq_settings
    extra = [w.strip() for w in s.jieba_words.split(",") if w.strip()]

    def run(entries: list[FaqEntry]):
        words = sorted({*kb_terms(entries), *extra})

        def factory(name: str) -> MilvusFaqStore:
            return MilvusFaqStore(
                s.uri,
                s.collection_alias,
                embedder.dim,
                s.token.get_secret_value() or None,
                physical_collection=name,
                embedder_version=embedder.version,
                bm25={"auto": None, "on": True, "off": False}[s.bm25],
                jieba_words=words,
                ranker=HybridRanker(s.ranker, s.rrf_k, s.dense_weight, s.bm25_weight),
                oversample=s.oversample,
                consistency_level=s.consistency_level,
                dense_index_type=s.dense_index_type,
                timeout_s=s.timeout_s,
            )

        return reindex(factory, entries, embedder, s.collection_alias, drop_grace_s=drop_grace_s)

    return run
