"""The FAQ admin API's own errors, without HTTP (`admin_http.STATUS` maps them, and the store's from
`domain.py`, to status codes; authentication errors are the platform's, services/common/errors.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from services.faq.domain import FaqError


class AdminError(FaqError):
    """Base class of the admin API's own errors; `message` is safe to show to the caller."""


class FaqExists(AdminError):
    """A create named a faq_id that is already taken."""


class ImportRejected(AdminError):
    """An import file broke a rule somewhere; nothing was applied. `rows`: `[{"row": n, "error": "..."}]`."""

    def __init__(self, message: str, rows: Sequence[dict[str, Any]] = ()):
        super().__init__(message)
        self.rows = list(rows)


class PayloadTooLarge(AdminError):
    """The request body is over the route's limit."""


class UnderMaintenance(AdminError):
    """Writes are paused while a re-index rebuilds the collection; retry after `retry_after_s`."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ReindexRunning(AdminError):
    """A re-index was asked for while one runs."""


class NotConfigured(AdminError):
    """The operation needs something this deployment was not given (a re-indexer)."""


class InvalidCharset(AdminError):
    """The Content-Type names a charset Python does not know, or a codec that is not a text encoding
    (`rot13`, `base64`, `hex`: bytes-to-bytes or str-to-str transforms)."""


class InvalidRequest(AdminError):
    """The request is malformed: not JSON, a field of the wrong type or out of bounds, an unknown field."""


class EmbedderUnavailable(AdminError):
    """The sentence encoder failed; nothing was written."""

    retry_after_s = 5
