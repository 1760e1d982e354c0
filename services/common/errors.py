"""The errors every service of the platform raises alike, without HTTP: who the caller is and whether they may.

The gateway's authentication (services/gateway/edge/security.py, guard.py) raises these, and so does the FAQ admin
API's own key check (services/faq/admin_http.py); each service's one error mapper renders them (401 with a
`WWW-Authenticate` challenge, 403, 429 with `Retry-After`). The admin router mounted on the gateway therefore
answers the gateway's authentication errors with no conversion between two schemes.
"""

from __future__ import annotations


class ServiceError(Exception):
    """A request refused for a reason the caller can act on: a stable snake_case `code`, a `message` safe to
    show (no internals, no user text beyond what they sent), `retry_after_s` when trying again makes sense."""

    def __init__(self, code: str, message: str, *, retry_after_s: int | str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_s = None if retry_after_s is None else str(retry_after_s)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.message!r})"


class Unauthenticated(ServiceError):
    """No credential, or one that is not valid."""


class Forbidden(ServiceError):
    """A valid credential without the scope the route needs."""


class TooManyRequests(ServiceError):
    """The caller's key is over its rate, or its address is blocked after refused credentials."""
