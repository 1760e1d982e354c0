"""PII and credential redaction for log lines: mainland mobile numbers, resident ID numbers, bank cards, e-mail
addresses, bearer tokens, JWTs and `name=value` credentials.

| kind | recognised | written as |
|---|---|---|
| e-mail | `local@domain.tld` (also `%40` for the `@`, as in a query string) | `z***@example.com` (first character of the local part kept) |
| resident ID | 18 characters: 6-digit region, birth date 18xx/19xx/20xx-MM-DD, 3 digits, digit or X | `110***********123X` |
| mobile | `1[3-9]` + 9 digits, optionally `+86`/`86` before and `-`, `.` or a space between the 3-4-4 groups | `138****5678` |
| bank card | 13-19 digits (spaces or `-` between groups allowed) passing the Luhn check | `****1234` |
| bearer credential | `Bearer <token>` | `Bearer ***` |
| JWT | `eyJ….eyJ….<signature>` | `<jwt>` |
| named credential | `api_key=…`, `apikey: …`, `x-api-key=…`, `token=…`, `access_token=…`, `password=…`, `secret=…`, `authorization: …` | `api_key=***` |

Full-width characters (`１３８１２３４５６７８`, `ｚｈａｎｇ＠ｅｘａｍｐｌｅ．ｃｏｍ`) are recognised like their ASCII forms
(matching runs on a half-width view of the line, character for character). A number glued to more digits (an
order number, a timestamp) is not cut out of it: every pattern needs a non-digit (or the text's edge) on both
sides. Redaction is for logs: it is deliberately greedy rather than precise, and it never sees model input.

uvicorn's access log line (`client - "METHOD path?query HTTP/1.1" status`) is redacted whole, and every value of
its query string is replaced by `***` (`?api_key=***&page=***`): query strings may carry credentials of any
shape. `client` is redacted too (it comes from `X-Forwarded-For` behind a trusted proxy).

`install_log_redaction()` adds `RedactionFilter` to the handlers of the root logger and uvicorn's loggers
(and to `logging.lastResort`), so every line they write is redacted, whatever logger emitted it: the
formatted message (format string and arguments), the exception text and the stack. Install it again after
something replaces handlers (uvicorn's `log_config` does; `Edge.install` re-installs at ASGI start-up).
"""

from __future__ import annotations

import logging
import re
from urllib.parse import quote, unquote

_EMAIL = re.compile(
    r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*?(?:@|%40)([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,})"
)
_ID = re.compile(
    r"(?<![0-9])([1-9]\d{2})\d{3}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])(\d{3}[0-9Xx])"
    r"(?![0-9A-Za-z])"
)
_MOBILE = re.compile(r"(?<![0-9])(?:\+?86[- .]?)?(1[3-9][0-9])[- .]?([0-9]{4})[- .]?([0-9]{4})(?![0-9])")
_CARD = re.compile(r"(?<![0-9])[0-9](?:[ -]?[0-9]){12,18}(?![0-9])")
_BEARER = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]+")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_NAMED = re.compile(
    r"(?i)(?<![A-Za-z0-9])((?:x-)?api[_-]?key|access[_-]?token|refresh[_-]?token|token|password|passwd|secret"
    r"|authorization|jwt)(\s*[=:]\s*[\"']?)(?!\*\*\*|bearer\s)[^\s&\"',;]+"
)
# full-width ASCII (U+FF01..FF5E) and the ideographic space, one character each: positions stay the same
_HALF_WIDTH = {0xFF01 + i: 0x21 + i for i in range(0x5E)} | {0x3000: 0x20}
LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "gunicorn.error", "gunicorn.access")
ACCESS_LOGGERS = ("uvicorn.access", "gunicorn.access")


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


def _sub(pattern: re.Pattern[str], repl, text: str) -> str:
    """`pattern.sub(repl, text)` matched on the half-width view of `text`; unmatched text is kept as it was."""
    view = text.translate(_HALF_WIDTH)
    if view == text:
        return pattern.sub(repl, text)
    out, last = [], 0
    for m in pattern.finditer(view):
        out += [text[last : m.start()], repl(m)]
        last = m.end()
    return "".join(out) + text[last:] if out else text


_RULES = (
    (_BEARER, lambda m: f"{m.group(1)} ***"),
    (_JWT, lambda m: "<jwt>"),
    (_NAMED, lambda m: f"{m.group(1)}{m.group(2)}***"),
    (_EMAIL, lambda m: f"{m.group(1)}***@{m.group(2)}"),
    (_ID, lambda m: f"{m.group(1)}{'*' * 11}{m.group(2)}"),
    (_MOBILE, lambda m: f"{m.group(1)}****{m.group(3)}"),
    (_CARD, _card),
)


def redact(text: str) -> str:
    """`text` with credentials, mobile numbers, 18-digit ID numbers, Luhn-valid bank cards and e-mails masked
    (see the module docstring for the shapes)."""
    if not text:
        return text
    for pattern, repl in _RULES:
        text = _sub(pattern, repl, text)
    return text


def redact_target(target: str) -> str:
    """A request target for the access log: the path redacted, every query value `***`."""
    path, sep, query = target.partition("?")
    # uvicorn logs the path as sent (percent-encoded): decode so that encoded PII is seen, then encode again
    # (no control character of a decoded path may reach the log)
    path = quote(redact(unquote(path)), safe="/*:@!$&'()+,;=~")
    if not sep:
        return path
    names = (part.partition("=")[0] for part in query.split("&"))
    return path + "?" + "&".join(f"{quote(redact(unquote(name)), safe='*')[:64]}=***" for name in names)


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
        if record.name in ACCESS_LOGGERS and isinstance(record.args, tuple) and len(record.args) == 5:
            # uvicorn's AccessFormatter unpacks these five arguments: keep their shape
            client, method, target, version, status = record.args
            record.args = (
                redact(str(client)),
                redact(str(method)),
                redact_target(str(target)),
                version,
                status,
            )
            record._kefu_redacted = True
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
