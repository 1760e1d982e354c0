"""The gateway's errors (no HTTP here) and its wire body.

Code anywhere in the gateway (core or edge) that refuses a request raises one of the classes below (the
authentication ones, `Unauthenticated` / `Forbidden` / `TooManyRequests`, are the platform's:
services/common/errors.py, so the mounted FAQ admin router renders them too) with a stable snake_case `code` and a `message` safe to show to the caller (it never echoes user text beyond what
they sent, and never carries internals). `api/http.py` alone maps them to HTTP (its `STATUS` table, KServe
style: one mapper per service), together with FastAPI's own validation / HTTP errors and unexpected
exceptions, into the uniform body

    {"error": {"code": "rate_limited", "message": "...", "request_id": "..."}}

which is the same shape the FAQ admin router (`services/faq/admin.py`) answers with.
"""

from __future__ import annotations

from services.common.errors import Forbidden, ServiceError, TooManyRequests, Unauthenticated

GatewayError = ServiceError  # the base of every error below; the authentication ones are the platform's


class InvalidInput(ServiceError):
    """The request itself is wrong: a text, a session id, what a model refused."""


class Unavailable(ServiceError):
    """The gateway cannot answer now (overloaded, its upstreams down); retry after `retry_after_s`."""


__all__ = [
    "Forbidden",
    "GatewayError",
    "InvalidInput",
    "TooManyRequests",
    "Unauthenticated",
    "Unavailable",
    "error_body",
]


def error_body(code: str, message: str, request_id: str) -> dict:
    """The uniform error body (the FAQ admin router's shape)."""
    return {"error": {"code": code, "message": message, "request_id": request_id}}
