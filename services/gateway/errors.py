"""The gateway's one error type and its wire body.

Anything in the gateway that refuses a request raises `ApiError(status, code, message)`; `edge.py` alone turns
it (and FastAPI's own validation / HTTP errors, and unexpected exceptions) into the uniform body

    {"error": {"code": "rate_limited", "message": "...", "request_id": "..."}}

which is the same shape the FAQ admin router (`services/faq/admin.py`) answers with. `code` is a stable,
machine-readable snake_case token; `message` is safe to show to the caller (it never echoes user text beyond
what they sent, and never carries internals).
"""

from __future__ import annotations


class ApiError(Exception):
    """Raised anywhere in the gateway; rendered as {"error": {"code", "message", "request_id"}}."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})

    def __repr__(self) -> str:
        return f"ApiError({self.status}, {self.code!r}, {self.message!r})"


def error_body(code: str, message: str, request_id: str) -> dict:
    """The uniform error body (the FAQ admin router's shape)."""
    return {"error": {"code": code, "message": message, "request_id": request_id}}
