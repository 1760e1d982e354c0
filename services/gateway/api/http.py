"""The HTTP rim of the gateway: request ids, the body-size limit, and the one place errors become responses.
(The limiter itself is `services/common/http_limits.py`, shared with the worker; the request-head limit (431)
is the server's protocol, set up by `__main__.py`.)

Pure ASGI middlewares (no `BaseHTTPMiddleware`: it buffers and breaks streaming) and FastAPI exception
handlers, all answering the uniform body of `errors.error_body`:

| raised | status | code |
|---|---|---|
| `GatewayError` (errors.py) | by class (`STATUS`): `InvalidInput` 400, `Unauthenticated` 401, `Forbidden` 403, `TooManyRequests` 429, `Unavailable` 503 | its own |
| body over the limit (declared or streamed) | 413 | `body_too_large` |
| `RequestValidationError` (FastAPI's request parsing) | 400 | `invalid_request`, the message names each field |
| `HTTPException` (404 unknown route, 405 ...) | its own | `not_found`, `method_not_allowed`, ... |
| anything else | 500 | `internal` (logged with its traceback; the body says nothing more) |

The request id is the caller's `X-Request-ID` when it is a plain token of at most 128 characters (the FAQ
admin router's rule), else a new uuid4 that is also written into the request's headers, so a mounted router
that reads the header (the FAQ admin router) uses the same id. It is `request.state.request_id` and every
response carries it back.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.http_errors import describe_validation
from services.common.http_errors import request_id as request_id_of
from services.common.http_limits import BodyLimitMiddleware, BodyTooLarge
from services.gateway.core.errors import (
    Forbidden,
    GatewayError,
    InvalidInput,
    TooManyRequests,
    Unauthenticated,
    Unavailable,
    error_body,
)
from services.gateway.edge.redaction import install_log_redaction

log = logging.getLogger("services.gateway")

HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
    503: "unavailable",
}
INTERNAL_MESSAGE = "internal error (see the server log for this request id)"


def request_id(request: Request) -> str:
    rid = getattr(request.state, "request_id", None)
    return rid or request.headers.get("x-request-id") or str(uuid.uuid4())


def error_response(status: int, code: str, message: str, rid: str, headers: dict[str, str] | None = None):
    return JSONResponse(
        error_body(code, message, rid), status_code=status, headers={**(headers or {}), "X-Request-ID": rid}
    )


class RequestIdMiddleware:
    """Request id in and out; (re-)installs log redaction when the server starts the app (lifespan), after
    the server has configured its own logging."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            install_log_redaction()
            return await self.app(scope, receive, send)
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        given = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"x-request-id"), None)
        rid = request_id_of(given)
        if rid != given:  # none, or not a plain token: a new one, and the app sees that one
            scope["headers"] = [(k, v) for k, v in scope.get("headers", ()) if k != b"x-request-id"]
            scope["headers"].append((b"x-request-id", rid.encode()))
        scope.setdefault("state", {})["request_id"] = rid

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["X-Request-ID"] = rid
            await send(message)

        await self.app(scope, receive, send_with_id)


def refuse_body(scope: Scope, message: str) -> JSONResponse:
    """The gateway's 413 for `BodyLimitMiddleware` (services/common/http_limits.py): the uniform error body."""
    rid = scope.get("state", {}).get("request_id") or str(uuid.uuid4())
    return error_response(413, "body_too_large", message, rid, {"Connection": "close"})


STATUS: dict[type[GatewayError], int] = {
    InvalidInput: 400,
    Unauthenticated: 401,
    Forbidden: 403,
    TooManyRequests: 429,
    Unavailable: 503,
}
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="kefu"'}


def gateway_error_response(exc: GatewayError, rid: str) -> JSONResponse:
    """The one mapping of the gateway's errors to HTTP: status by class, `Retry-After`, the 401 challenge."""
    status = next((code for cls, code in STATUS.items() if isinstance(exc, cls)), 500)
    headers = dict(CHALLENGE) if isinstance(exc, Unauthenticated) else {}
    if exc.retry_after_s is not None:
        headers["Retry-After"] = exc.retry_after_s
    return error_response(status, exc.code, exc.message, rid, headers)


async def _gateway_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, GatewayError)
    return gateway_error_response(exc, request_id(request))


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(400, "invalid_request", describe_validation(exc), request_id(request))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    if isinstance(exc.__cause__, GatewayError):  # FastAPI wraps errors raised while reading the body
        return await _gateway_error(request, exc.__cause__)
    if isinstance(exc.__cause__, BodyTooLarge):
        return await _body_too_large(request, exc.__cause__)
    code = HTTP_CODES.get(exc.status_code, "http_error")
    detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail, ensure_ascii=False)
    return error_response(exc.status_code, code, detail, request_id(request), dict(exc.headers or {}))


async def _body_too_large(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, BodyTooLarge)
    return error_response(413, "body_too_large", exc.message, request_id(request), {"Connection": "close"})


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    rid = request_id(request)
    log.error("request %s failed: %s %s", rid, request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal", INTERNAL_MESSAGE, rid)


def install_http(app: FastAPI, max_body_bytes: int, exempt_prefixes: Sequence[str] = ()) -> None:
    """Middlewares (request id outermost, then the body limit) and exception handlers on `app`."""
    app.add_middleware(
        BodyLimitMiddleware, limit=max_body_bytes, refuse=refuse_body, exempt_prefixes=tuple(exempt_prefixes)
    )
    app.add_middleware(RequestIdMiddleware)  # added last = outermost
    handlers: list[tuple[Any, Any]] = [
        (GatewayError, _gateway_error),
        (BodyTooLarge, _body_too_large),
        (RequestValidationError, _validation_error),
        (HTTPException, _http_error),
        (Exception, _internal_error),
    ]
    for exc_type, handler in handlers:
        app.add_exception_handler(exc_type, handler)
