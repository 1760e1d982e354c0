"""PII redaction for log lines: mainland mobile numbers, resident ID numbers, bank cards, e-mail addresses.

| kind | recognised | written as |
|---|---|---|
| e-mail | `local@domain.tld` | `z***@example.com` (first character of the local part kept) |
| resident ID | 18 characters: 6-digit region, birth date 18xx/19xx/20xx-MM-DD, 3 digits, digit or X | `110***********123X` |
| mobile | `1[3-9]` + 9 digits, optionally `+86`/`86` before and `-`/space between the 3-4-4 groups | `138****5678` |
| bank card | 13-19 digits (spaces or `-` between groups allowed) passing the Luhn check | `****1234` |

A number glued to more digits (an order number, a timestamp) is not cut out of it: every pattern needs a
non-digit (or the text's edge) on both sides. Redaction is for logs: it is deliberately greedy rather than
precise, and it never sees model input.

`install_log_redaction()` adds `RedactionFilter` to the handlers of the root logger and uvicorn's loggers
(and to `logging.lastResort`), so every line they write is redacted, whatever logger emitted it: the
formatted message (format string and arguments), the exception text and the stack. Install it again after
something replaces handlers (uvicorn's `log_config` does; `Edge.install` re-installs at ASGI start-up).
"""

from __future__ import annotations

import logging
import re

_EMAIL = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,})")
_ID = re.compile(
    r"(?<![0-9])([1-9]\d{2})\d{3}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])(\d{3}[0-9Xx])"
    r"(?![0-9A-Za-z])"
)
_MOBILE = re.compile(r"(?<![0-9])(?:\+?86[- ]?)?(1[3-9]\d)[- ]?(\d{4})[- ]?(\d{4})(?![0-9])")
_CARD = re.compile(r"(?<![0-9])\d(?:[ -]?\d){12,18}(?![0-9])")
LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "gunicorn.error", "gunicorn.access")


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card(m: re.Match) -> str:
    digits = re.sub(r"[ -]", "", m.group(0))
    if 13 <= len(digits) <= 19 and luhn_ok(digits):
        return "****" + digits[-4:]
    return m.group(0)


def redact(text: str) -> str:
    """`text` with mobile numbers, 18-digit ID numbers, Luhn-valid bank cards and e-mails masked."""
    if not text:
        return text
    text = _EMAIL.sub(lambda m: f"{m.group(1)}***@{m.group(2)}", text)
    text = _ID.sub(lambda m: f"{m.group(1)}{'*' * 11}{m.group(2)}", text)
    text = _MOBILE.sub(lambda m: f"{m.group(1)}****{m.group(3)}", text)
    return _CARD.sub(_card, text)


def mask_phone(phone: str) -> str:
    """`13812345678` → `138****5678` (what sessions keep of a phone number)."""
    digits = re.sub(r"\D", "", phone)[-11:]
    return f"{digits[:3]}****{digits[-4:]}" if len(digits) == 11 else "*" * len(digits)


class RedactionFilter(logging.Filter):
    """Redacts a record in place before any handler formats it (never drops a record)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            self._redact(record)
        except Exception:  # a record that cannot even be formatted: keep nothing of its text
            record.msg, record.args = "<log record could not be redacted>", ()
        return True

    @staticmethod
    def _redact(record: logging.LogRecord) -> None:
        if getattr(record, "_kefu_redacted", False):  # several handlers share one record
            return
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict) and record.args:
            record.args = {k: redact(v) if isinstance(v, str) else v for k, v in record.args.items()}
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        message = record.getMessage()
        if redact(message) != message:  # PII made of non-str arguments (an int, an object's str)
            record.msg, record.args = redact(message), ()
        elif not isinstance(record.msg, str):
            record.msg, record.args = message, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        record._kefu_redacted = True


_FILTER = RedactionFilter()


def _add(handler: logging.Handler) -> None:
    if not any(isinstance(f, RedactionFilter) for f in handler.filters):
        handler.addFilter(_FILTER)


def install_log_redaction(logger: logging.Logger | None = None) -> None:
    """Adds the redaction filter to every handler of `logger`, or (None) of the root logger, uvicorn's
    loggers and `logging.lastResort`. Idempotent."""
    loggers = [logger] if logger is not None else [logging.getLogger(), *map(logging.getLogger, LOGGERS)]
    for lg in loggers:
        for handler in lg.handlers:
            _add(handler)
    if logger is None and logging.lastResort is not None:
        _add(logging.lastResort)
