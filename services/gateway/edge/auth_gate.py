"""Authentication before the body: the gateway's answer to FastAPI reading (and parsing) a request body before
it runs the route's dependencies.

Without it, an unauthenticated request with a broken body got 400 and one with a large streamed body 413, and
invalid bodies never reached the per-key rate limit. `Edge.install` adds `AuthGate` innermost, after the request
id and the declared-size 413 (which reads nothing), so the order on an authenticated route is: 413 for a declared
Content-Length over the limit, 401, 403, 429, then the body (400 / 413 while streaming).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.gateway.api.http import gateway_error_response
from services.gateway.core.errors import GatewayError
from services.gateway.edge.security import Principal


class AuthGate:
    """Pure ASGI middleware that authenticates a request before its body is read.

    The router picks the route first (so 404 / 405 stay what they are); the first time the app asks for the
    body, and the route depends on the edge's `require(scope)` or `admin_dependency(scope)` (tagged
    `kefu_auth_scope`), the gate runs `admit(request, scope)` (the edge's: credentials, scope, the key's rate
    limit). Refused: the app is told the
    client went away (`http.disconnect`, so it reads nothing), whatever it answers is dropped, and the gate
    sends the refusal in the uniform error body. Routes without a body authenticate in their dependency as
    before; the dependency reuses a principal the gate admitted."""

    def __init__(self, app: ASGIApp, admit: Callable[[Request, str], Awaitable[Any]]):
        self.app, self.admit = app, admit
        self._scopes: dict[int, str | None] = {}  # id(route) -> scope its dependencies require

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        checked, started = False, False
        refused: GatewayError | None = None

        async def gated_receive() -> Message:
            nonlocal checked, refused
            if not checked:
                checked = True
                needed = self._needed_scope(scope.get("route"))
                if needed is not None and not isinstance(scope.get("state", {}).get("principal"), Principal):
                    try:
                        await self.admit(Request(scope), needed)
                    except GatewayError as e:
                        refused = e
            if refused is not None:
                return {"type": "http.disconnect"}
            return await receive()

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused is not None and not started:
                return  # the app's answer to the missing body is replaced by the refusal below
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, gated_receive, guarded_send)
        except Exception:
            if refused is None or started:
                raise
        if refused is not None and not started:
            rid = scope.get("state", {}).get("request_id") or str(uuid.uuid4())
            response = gateway_error_response(refused, rid)
            await response(scope, receive, send)

    def _needed_scope(self, route: Any) -> str | None:
        if route is None:
            return None
        if id(route) not in self._scopes:
            self._scopes[id(route)] = _auth_scope_of(route)
        return self._scopes[id(route)]


def _auth_scope_of(route: Any) -> str | None:
    """The scope of the first edge auth dependency (tagged `kefu_auth_scope`) in the route's dependency tree."""
    dependant = getattr(route, "dependant", None)
    pending = [dependant] if dependant is not None else []
    while pending:
        d = pending.pop(0)
        needed = getattr(d.call, "kefu_auth_scope", None)
        if needed:
            return needed
        pending.extend(d.dependencies)
    return None
