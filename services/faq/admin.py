"""FAQ admin API: a FastAPI router the gateway mounts under `/admin/faq`.

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

import asyncio
import hashlib
import hmac
import logging
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, is_dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.routing import APIRoute
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import Message, Receive

from services.faq.admin_schemas import (
    AdminError,
    EmbedderUnavailable,
    FaqExists,
    FaqIn,
    FaqOut,
    FaqPage,
    FaqUpdate,
    Forbidden,
    ImportFormat,
    ImportMode,
    ImportPlan,
    ImportRejected,
    ImportReport,
    InvalidRequest,
    NotConfigured,
    PayloadTooLarge,
    ReindexRunning,
    ReindexStatus,
    SearchRequest,
    SearchResponse,
    Unauthorized,
    UnderMaintenance,
    charset_of,
    decode,
    detect_format,
    export_chunks,
    parse_import,
    plan_import,
)
from services.faq.domain import (
    DuplicateQuestion,
    FaqEntry,
    FaqError,
    FaqNotFound,
    InvalidFaq,
    InvalidQuery,
    ModeNotSupported,
    ReindexFailed,
    StoreUnavailable,
)
from services.faq.store import Embedder, FaqStore, embed_entries

log = logging.getLogger(__name__)
audit = logging.getLogger("services.faq.admin.audit")

ADMIN_SCOPE = "faq:admin"
READ_PAGE = 1000  # FAQs per store.list call when the whole knowledge base is read
Reindexer = Callable[[list[FaqEntry]], Any]
"""Rebuilds the store's collection from these entries (e.g. `milvus_reindexer`); returns a report."""


class FaqAdminSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KEFU_FAQ_ADMIN_", extra="forbid")

    api_key_sha256: str = Field(
        "",
        description="comma-separated sha256 hex digests of the admin API keys (`printf %s KEY | sha256sum`); "
        "empty = every request is refused",
    )
    max_body_bytes: int = Field(256 * 1024, ge=1024, description="largest body of a JSON route (413 above)")
    max_import_bytes: int = Field(5 * 1024 * 1024, ge=1024, description="largest import file (413 above)")
    page_limit: int = Field(200, ge=1, le=1000, description="largest `limit` of GET /faqs")
    default_page: int = Field(50, ge=1, description="`limit` of GET /faqs when none is given")
    maintenance_retry_after_s: int = Field(
        30, ge=1, description="Retry-After of writes refused while a re-index runs"
    )
    embed_batch_size: int = Field(256, ge=1, description="phrasings per embedder call")

    def auth(self) -> Callable[..., Any]:
        """The `require_admin_key` dependency for `api_key_sha256`."""
        return require_admin_key({k.strip() for k in self.api_key_sha256.split(",") if k.strip()})


# ── errors → HTTP (the one place) ───────────────────────────────────────────────────────────────────

STATUS: list[tuple[type[Exception], int, str]] = [
    (InvalidRequest, 400, "invalid_request"),
    (InvalidFaq, 400, "invalid_faq"),
    (InvalidQuery, 400, "invalid_query"),
    (ModeNotSupported, 400, "mode_not_supported"),
    (ImportRejected, 400, "import_rejected"),
    (Unauthorized, 401, "unauthorized"),
    (Forbidden, 403, "forbidden"),
    (FaqNotFound, 404, "faq_not_found"),
    (FaqExists, 409, "faq_exists"),
    (DuplicateQuestion, 409, "duplicate_question"),
    (ReindexRunning, 409, "reindex_running"),
    (PayloadTooLarge, 413, "payload_too_large"),
    (ReindexFailed, 500, "reindex_failed"),
    (NotConfigured, 501, "not_configured"),
    (UnderMaintenance, 503, "maintenance"),
    (EmbedderUnavailable, 503, "embedder_unavailable"),
    (StoreUnavailable, 503, "store_unavailable"),
]
STORE_RETRY_AFTER_S = 5
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")


def request_id_of(request: Request) -> str:
    """The caller's `X-Request-ID` when it is a plain token of at most 128 characters, else a new uuid4."""
    rid = request.headers.get("x-request-id", "")
    return rid if _REQUEST_ID.match(rid) else str(uuid.uuid4())


def error_response(error: Exception, request_id: str) -> JSONResponse:
    if isinstance(error, HTTPException) and isinstance(error.__cause__, AdminError):
        error = error.__cause__  # FastAPI wraps what the body reader raised (PayloadTooLarge)
    if isinstance(error, RequestValidationError):
        error = InvalidRequest(describe_validation(error))
    headers: dict[str, str] = {}
    if isinstance(error, HTTPException):
        status, code, message = error.status_code, "bad_request", str(error.detail)
        headers.update(error.headers or {})
    else:
        match = next(((s, c) for cls, s, c in STATUS if isinstance(error, cls)), None)
        if match is None:
            log.error("FAQ admin request %s failed", request_id, exc_info=error)
            status, code, message = 500, "internal", "internal error (see the server log for this request id)"
        else:
            status, code = match
            message = error.message if isinstance(error, FaqError) else str(error)
    body: dict[str, Any] = {"code": code, "message": message, "request_id": request_id}
    if isinstance(error, ImportRejected):
        body["rows"] = error.rows
    if isinstance(error, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="kefu-admin"'
    if retry := getattr(error, "retry_after_s", None):
        headers["Retry-After"] = str(retry)
    elif isinstance(error, StoreUnavailable):
        headers["Retry-After"] = str(STORE_RETRY_AFTER_S)
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def describe_validation(e: RequestValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path"))
        msg = err.get("msg", "invalid")
        if err.get("type") == "json_invalid":
            loc, msg = "body", f"not JSON ({(err.get('ctx') or {}).get('error', 'decode error')})"
        parts.append(f"{loc or 'body'}: {msg}")
    return "invalid request: " + "; ".join(parts)


def _bulk_body(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Marks a route whose body may be as large as `max_import_bytes`."""
    fn._kefu_bulk_body = True  # type: ignore[attr-defined]
    return fn


def _limited(receive: Receive, limit: int) -> Receive:
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise PayloadTooLarge(f"request body over {limit} bytes")
        return message

    return wrapped


def _route_class(settings: FaqAdminSettings) -> type[APIRoute]:
    class AdminRoute(APIRoute):
        """Request id, body limit and the uniform error body for every admin route, whatever app mounts it."""

        def get_route_handler(self):
            handler = super().get_route_handler()
            bulk = getattr(self.endpoint, "_kefu_bulk_body", False)
            limit = settings.max_import_bytes if bulk else settings.max_body_bytes

            async def route(request: Request) -> Response:
                rid = request_id_of(request)
                request.state.request_id = rid
                try:
                    declared = request.headers.get("content-length", "")
                    if declared.isdigit() and int(declared) > limit:
                        raise PayloadTooLarge(f"request body of {declared} bytes is over {limit} bytes")
                    response = await handler(Request(request.scope, _limited(request.receive, limit)))
                except Exception as e:
                    response = error_response(e, rid)
                response.headers["X-Request-ID"] = rid
                return response

            return route

    return AdminRoute


# ── authentication ──────────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class AdminPrincipal:
    key_id: str  # the first 12 hex digits of the key's sha256: names the key in logs, reveals nothing
    scopes: frozenset[str]


def require_admin_key(
    keys: Iterable[str] | Mapping[str, Iterable[str]], scope: str = ADMIN_SCOPE
) -> Callable[..., Any]:
    """A FastAPI dependency: `Authorization: Bearer <key>` whose sha256 (hex) is one of `keys`.

    `keys` is a set of digests (each key has every scope) or a mapping digest -> scopes; a known key without
    `scope` gets 403. Keys themselves are never stored; digests are compared with `hmac.compare_digest`."""
    table: list[tuple[str, frozenset[str]]] = []
    items = keys.items() if isinstance(keys, Mapping) else ((k, (scope,)) for k in keys)
    for digest, scopes in items:
        digest = digest.strip().lower()
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ValueError("admin keys must be given as sha256 hex digests (64 hex digits)")
        table.append((digest, frozenset(scopes)))
    if not table:
        log.warning("FAQ admin API: no admin keys configured, every request will be refused")

    async def admin_key(request: Request) -> AdminPrincipal:
        header = request.headers.get("authorization")
        if not header:
            raise Unauthorized("missing credentials: send Authorization: Bearer <admin key>")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("Authorization must be 'Bearer <admin key>'")
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()
        found = None
        for known, scopes in table:  # every digest is compared: timing does not say which one matched
            if hmac.compare_digest(digest, known):
                found = (known, scopes)
        if found is None:
            raise Unauthorized("invalid admin key")
        if scope not in found[1]:
            raise Forbidden(f"this key lacks the {scope} scope")
        principal = AdminPrincipal(found[0][:12], found[1])
        request.state.principal = principal
        return principal

    return admin_key


def _who(request: Request) -> str:
    principal = getattr(request.state, "principal", None)
    return f"key {principal.key_id}" if principal else "unknown key"


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
    ):
        self.store, self.embedder, self.settings, self.reindexer = store, embedder, settings, reindexer
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
        return await asyncio.shield(task)

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


# ── the router ──────────────────────────────────────────────────────────────────────────────────────


def create_admin_router(
    store: FaqStore,
    embedder: Embedder,
    auth: Callable[..., Any],
    *,
    settings: FaqAdminSettings | None = None,
    reindexer: Reindexer | None = None,
) -> APIRouter:
    """The admin routes over `store`, embedding with `embedder`; `auth` is a FastAPI dependency that raises
    `Unauthorized` / `Forbidden` (e.g. `require_admin_key(...)`). `reindexer` enables `POST /reindex`
    (`milvus_reindexer` for a `MilvusFaqStore`). The `FaqAdmin` behind the routes is `router.faq_admin`."""
    settings = settings or FaqAdminSettings()
    admin = FaqAdmin(store, embedder, settings, reindexer)
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
                s.token or None,
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
