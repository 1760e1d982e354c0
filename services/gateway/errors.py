"""The gateway's errors (no HTTP here) and its wire body.

Code anywhere in the gateway (core or edge) that refuses a request raises one of the classes below with a
stable snake_case `code` and a `message` safe to show to the caller (it never echoes user text beyond what
they sent, and never carries internals). `edge_http.py` alone maps them to HTTP (its `STATUS` table, KServe
style: one mapper per service), together with FastAPI's own validation / HTTP errors and unexpected
exceptions, into the uniform body

    {"error": {"code": "rate_limited", "message": "...", "request_id": "..."}}

which is the same shape the FAQ admin router (`services/faq/admin.py`) answers with.
"""

from __future__ import annotations


class GatewayError(Exception):
    """A request refused for a reason the caller can act on. `retry_after_s`: when trying again makes sense."""

    def __init__(self, code: str, message: str, *, retry_after_s: int | str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_s = None if retry_after_s is None else str(retry_after_s)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.message!r})"


class InvalidInput(GatewayError):
    """The request itself is wrong: a text, a session id, what a model refused."""


class Unauthenticated(GatewayError):
    """No credential, or one that is not valid."""


class Forbidden(GatewayError):
    """A valid credential without the scope the route needs."""


class TooManyRequests(GatewayError):
    """The caller's key is over its rate, or its address is blocked after refused credentials."""


class Unavailable(GatewayError):
    """The gateway cannot answer now (overloaded, its upstreams down); retry after `retry_after_s`."""


def error_body(code: str, message: str, request_id: str) -> dict:
    """The uniform error body (the FAQ admin router's shape)."""
    return {"error": {"code": code, "message": message, "request_id": request_id}}
