"""What the worker does to every HTTP request before a route sees it, on both ports.

The size limits are the platform's one copy, `services.common.http_limits` (shared with the gateway):
- `WorkerHttpProtocol`: uvicorn's httptools protocol with the request line + headers capped at
  `max_header_bytes` (431 at once, before the head is buffered; httptools alone has no limit). A module-level
  class, because uvicorn's supervisor pickles its config by reference for each server process; every process
  sets the limit from its settings (`set_header_limit`) before it serves.
- `body_limit(app, settings)`: 413 from Content-Length before a byte of the body is read, else as soon as a
  streamed (chunked) body passes `max_body_bytes`; uvicorn stops reading a connection whose app does not read
  (64 KiB high-water mark), so nothing near the body's size is ever buffered.
- `AccessLogMiddleware`: one line per request on the `services.worker.access` logger (INFO): client, method,
  the matched route's template with a valid model name filled in (`/v2/models/intent/infer`; never the raw
  path), status, milliseconds. Query strings and headers are never logged (uvicorn's own access log, which
  writes them as sent, is turned off).
"""

from __future__ import annotations

import logging
import time

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.http_limits import BodyLimitMiddleware, HeaderLimitedHttpTools
from services.runtime.repository import MODEL_NAME

access_log = logging.getLogger("services.worker.access")


class WorkerHttpProtocol(HeaderLimitedHttpTools):
    """The worker's HTTP protocol (`uvicorn.Config(http=WorkerHttpProtocol)`)."""


def set_header_limit(max_header_bytes: int) -> None:
    WorkerHttpProtocol.max_header_bytes = max_header_bytes


def _refuse_body(scope: Scope, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=413, headers={"Connection": "close"})


def install_body_limit(app, max_body_bytes: int) -> None:
    app.add_middleware(BodyLimitMiddleware, limit=max_body_bytes, refuse=_refuse_body)


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not access_log.isEnabledFor(logging.INFO):
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), 500

        async def status_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, status_send)
        finally:
            route = scope.get("route")
            template = getattr(route, "path_format", None) or "(no route)"
            name = str(scope.get("path_params", {}).get("name", ""))
            if name and MODEL_NAME.fullmatch(name):
                template = template.replace("{name}", name)
            client = (scope.get("client") or ("-",))[0]
            ms = (time.perf_counter() - started) * 1000
            access_log.info("%s %s %s %d %.1fms", client, scope["method"], template, status, ms)
