"""Size limits enforced before anything is buffered, for every HTTP server of the platform (gateway, worker).

Two layers, because they see different things:

- `HeaderLimitedHttpTools`, the HTTP protocol the servers run (uvicorn's httptools parser has no limit of its
  own, so a 64 MiB header was read whole): a request line plus headers over `max_header_bytes` is answered
  `431 Request Header Fields Too Large` as soon as that many bytes arrived without the head being complete,
  and the connection is closed after a short lingering read (the client sees the 431, not a reset). The app
  never runs, so nothing of the head is kept. Build one with `header_limited_protocol(limit)`.
- `BodyLimitMiddleware`, pure ASGI: a body over `limit` bytes is refused at once when `Content-Length` says so
  (nothing is read), else as soon as the streamed body (chunked) passes the limit. uvicorn pauses reading when
  an unread body passes 64 KiB, so a body is never buffered beyond that plus one read. Each service renders the
  413 in its own error format through `refuse(scope, message) -> ASGI response`.

No framework beyond Starlette's types and uvicorn; nothing here imports gateway or worker code.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

LINGER_S = 2.0  # after a refusal: keep reading (and dropping) this long so the client can read the answer
LINGER_BYTES = 8 * 1024 * 1024  # ... or until this much was dropped


class BodyTooLarge(Exception):
    """Raised into the app by the middleware's `receive` when the streamed body passes the limit."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


Refuse = Callable[[Scope, str], Any]  # (scope, message) -> an ASGI app answering 413


def limit_receive(receive: Receive, limit: int, too_large: Callable[[], Exception]) -> Receive:
    """`receive` that raises `too_large()` as soon as the body read so far passes `limit` bytes: the one
    body limiter of every service (this module's middleware, and the FAQ admin routes, whose limit depends
    on the route)."""
    seen = 0

    async def limited() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise too_large()
        return message

    return limited


class BodyLimitMiddleware:
    """413 for a body over `limit` bytes: at once when Content-Length says so, else as soon as the streamed body
    passes the limit (whatever the app did with the error, the answer is the 413). Paths under
    `exempt_prefixes` enforce their own limits (the FAQ admin router: 5 MiB imports, streamed)."""

    def __init__(self, app: ASGIApp, limit: int, refuse: Refuse, exempt_prefixes: Sequence[str] = ()):
        self.app, self.limit, self.refuse, self.exempt = app, limit, refuse, tuple(exempt_prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (self.exempt and scope["path"].startswith(self.exempt)):
            return await self.app(scope, receive, send)
        declared = next((v for k, v in scope.get("headers", ()) if k == b"content-length"), b"")
        if declared.isdigit() and int(declared) > self.limit:
            msg = f"request body of {int(declared)} bytes is over the limit of {self.limit} bytes"
            return await self.refuse(scope, msg)(scope, receive, send)
        exceeded, started = False, False
        over = f"request body over the limit of {self.limit} bytes"

        def too_large() -> Exception:
            nonlocal exceeded
            exceeded = True
            return BodyTooLarge(over)

        limited_receive = limit_receive(receive, self.limit, too_large)

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded and not started:
                return  # the app's answer to the error is replaced by the 413 below
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not exceeded or started:
                raise
        if exceeded and not started:
            await self.refuse(scope, over)(scope, receive, send)


class HeaderLimitedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with a limit on the request head (request line + headers)."""

    max_header_bytes = 32 * 1024

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._in_head, self._head_bytes, self._refused, self._dropped = True, 0, False, 0

    def data_received(self, data: bytes) -> None:
        if self._refused:  # lingering after a 431: drop what the client is still sending
            self._dropped += len(data)
            if self._dropped > LINGER_BYTES:
                self._close()
            return
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > self.max_header_bytes and not self._refused:
            self._refuse_head()  # the head is still incomplete and already over the limit: read no more

    # parser callbacks: after a refusal the rest of the buffer fed in the same call is ignored

    def on_message_begin(self) -> None:
        if not self._refused:
            super().on_message_begin()
            self._in_head = True

    def on_url(self, url: bytes) -> None:
        if not self._refused:
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._refused:
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        self._in_head, self._head_bytes = False, 0
        if len(self.url) + sum(len(k) + len(v) + 4 for k, v in self.headers) > self.max_header_bytes:
            self._refuse_head()  # a head that arrived whole in one read
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._refused:
            super().on_message_complete()
            self._in_head = True

    def _refuse_head(self) -> None:
        """431, then half-close and keep dropping input for a moment (closing a socket with unread input sends
        a reset, and the client would lose the answer); the parser is never fed again."""
        self._refused, self._in_head = True, False
        msg = f"request header fields over the limit of {self.max_header_bytes} bytes"
        self.logger.warning("refused a request head over %d bytes (431)", self.max_header_bytes)
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: text/plain; charset=utf-8\r\n"
            + b"content-length: %d\r\n" % len(msg)
            + b"connection: close\r\n\r\n"
            + msg.encode("ascii")
        )
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self._close)

    def _close(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()


def header_limited_protocol(max_header_bytes: int) -> type[HeaderLimitedHttpTools]:
    """A protocol class for `uvicorn.Config(http=...)` refusing request heads over `max_header_bytes`."""
    return type("HeaderLimitedHttpTools", (HeaderLimitedHttpTools,), {"max_header_bytes": max_header_bytes})
