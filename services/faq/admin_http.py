"""FAQ admin API: its settings, errors → HTTP status and the uniform error body (the one place), request bodies
with a size limit, and admin-key authentication."""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.exceptions import HTTPException

from services.common.errors import Forbidden, ServiceError, TooManyRequests, Unauthenticated
from services.common.http_errors import describe_validation, request_id
from services.common.http_limits import limit_receive
from services.faq.admin_errors import (
    AdminError,
    EmbedderUnavailable,
    FaqExists,
    ImportRejected,
    InvalidCharset,
    InvalidRequest,
    NotConfigured,
    PayloadTooLarge,
    ReindexRunning,
    UnderMaintenance,
)
from services.faq.domain import (
    DuplicateQuestion,
    FaqError,
    FaqNotFound,
    InvalidFaq,
    InvalidQuery,
    ModeNotSupported,
    ReindexFailed,
    StoreUnavailable,
)

log = logging.getLogger(__name__)

ADMIN_SCOPE = "faq:admin"


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
    bm25_refresh_s: float = Field(
        2.0,
        ge=0,
        description="milvus-lite only: seconds after the last write before the collection is rebuilt from its "
        "stored vectors so BM25 ranks new FAQs right (its statistics are per segment); 0 = never",
    )
    bm25_retry_max_s: float = Field(
        60.0,
        gt=0,
        description="a BM25 refresh that fails (store down) is retried after bm25_refresh_s, doubling the wait "
        "after each failure up to this, until it succeeds",
    )

    def auth(self) -> Callable[..., Any]:
        """The `require_admin_key` dependency for `api_key_sha256`."""
        return require_admin_key({k.strip() for k in self.api_key_sha256.split(",") if k.strip()})


# ── errors → HTTP (the one place) ───────────────────────────────────────────────────────────────────

STATUS: list[tuple[type[Exception], int, str]] = [
    (InvalidRequest, 400, "invalid_request"),
    (InvalidCharset, 400, "invalid_charset"),
    (InvalidFaq, 400, "invalid_faq"),
    (InvalidQuery, 400, "invalid_query"),
    (ModeNotSupported, 400, "mode_not_supported"),
    (ImportRejected, 400, "import_rejected"),
    (Unauthenticated, 401, "unauthorized"),
    (Forbidden, 403, "forbidden"),
    (FaqNotFound, 404, "faq_not_found"),
    (TooManyRequests, 429, "rate_limited"),
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


def request_id_of(request: Request) -> str:
    """The caller's `X-Request-ID` when it is a plain token of at most 128 characters, else a new uuid4."""
    return request_id(request.headers.get("x-request-id"))


def error_response(error: Exception, request_id: str) -> JSONResponse:
    if isinstance(error, HTTPException) and isinstance(error.__cause__, AdminError):
        error = error.__cause__  # FastAPI wraps what the body reader raised (PayloadTooLarge)
    elif isinstance(error, HTTPException) and isinstance(error.__cause__, RecursionError):
        error = InvalidRequest("body: JSON nested too deeply")  # FastAPI's "error parsing the body"
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
            message = error.message if isinstance(error, FaqError | ServiceError) else str(error)
            if isinstance(error, ServiceError):
                code = error.code  # the platform's errors name themselves (auth_throttled, rate_limited ...)
    body: dict[str, Any] = {"code": code, "message": message, "request_id": request_id}
    if isinstance(error, ImportRejected):
        body["rows"] = error.rows
    if isinstance(error, Unauthenticated):
        headers["WWW-Authenticate"] = 'Bearer realm="kefu-admin"'
    if retry := getattr(error, "retry_after_s", None):
        headers["Retry-After"] = str(retry)
    elif isinstance(error, StoreUnavailable):
        headers["Retry-After"] = str(STORE_RETRY_AFTER_S)
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def _bulk_body(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Marks a route whose body may be as large as `max_import_bytes`."""
    fn._kefu_bulk_body = True  # type: ignore[attr-defined]
    return fn


def _route_class(settings: FaqAdminSettings) -> type[APIRoute]:
    class AdminRoute(APIRoute):
        """Request id, body limit and the uniform error body for every admin route, whatever app mounts it."""

        def get_route_handler(self):
            handler = super().get_route_handler()
            bulk = getattr(self.endpoint, "_kefu_bulk_body", False)
            limit = settings.max_import_bytes if bulk else settings.max_body_bytes
            # authentication that needs only the headers runs before the body is read (401 before 400/413)
            before_body = [d.dependency for d in self.dependencies if hasattr(d.dependency, "before_body")]

            async def route(request: Request) -> Response:
                rid = request_id_of(request)
                request.state.request_id = rid
                try:
                    declared = request.headers.get("content-length", "")
                    for dependency in before_body:
                        await dependency.before_body(request)
                    if declared.isdigit() and int(declared) > limit:
                        raise PayloadTooLarge(f"request body of {declared} bytes is over {limit} bytes")
                    limited = limit_receive(
                        request.receive, limit, lambda: PayloadTooLarge(f"request body over {limit} bytes")
                    )
                    response = await handler(Request(request.scope, limited))
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
        admitted = getattr(request.state, "admin_principal", None)
        if isinstance(admitted, AdminPrincipal):  # checked before the body (AdminRoute)
            return admitted
        header = request.headers.get("authorization")
        if not header:
            raise Unauthenticated(
                "unauthorized", "missing credentials: send Authorization: Bearer <admin key>"
            )
        scheme, _, token = header.partition(" ")
        token = token.strip(" \t")  # ASCII blanks only: a key with a non-ASCII space is refused, not trimmed
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("unauthorized", "Authorization must be 'Bearer <admin key>'")
        if not re.fullmatch(r"[\x20-\x7e]+", token):
            raise Unauthenticated("unauthorized", "invalid admin key: only printable ASCII is allowed")
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()
        found = None
        for known, scopes in table:  # every digest is compared: timing does not say which one matched
            if hmac.compare_digest(digest, known):
                found = (known, scopes)
        if found is None:
            raise Unauthenticated("unauthorized", "invalid admin key")
        if scope not in found[1]:
            raise Forbidden("forbidden", f"this key lacks the {scope} scope")
        principal = AdminPrincipal(found[0][:12], found[1])
        request.state.principal = request.state.admin_principal = principal
        return principal

    admin_key.before_body = admin_key  # type: ignore[attr-defined]  (AdminRoute runs it before the body)
    return admin_key


def _who(request: Request) -> str:
    principal = getattr(request.state, "principal", None)
    return f"key {principal.key_id}" if principal else "unknown key"
