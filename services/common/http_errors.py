"""What every HTTP service of the platform (gateway, FAQ admin, worker) says the same way about a request:
its id and what is wrong with its body. Each service still renders its own error body (KServe-style: one
mapper per service); the wording of a validation error and the rule for a caller's request id live here once.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")  # a plain token: safe in logs and headers
WHERE = ("body", "query", "path", "header")  # FastAPI's location prefixes: not part of a field's name
MAX_PROBLEMS = 10


def request_id(given: str | None) -> str:
    """The caller's `X-Request-ID` when it is a plain token of at most 128 characters, else a new uuid4."""
    return given if given and REQUEST_ID_RE.fullmatch(given) else str(uuid.uuid4())


def describe_validation(
    error: RequestValidationError | ValidationError,
    prefix: str = "invalid request",
    drop: Iterable[str] = WHERE,
) -> str:
    """`invalid request: texts.3: String should have at most 512 characters; ...`: field paths and what is
    wrong with each, never the input itself (it may hold personal data); at most `MAX_PROBLEMS` listed."""
    drop = tuple(drop)
    parts = []
    for err in error.errors():
        loc = ".".join(str(x) for x in err.get("loc", ()) if x not in drop)
        msg = err.get("msg", "invalid")
        if err.get("type") == "json_invalid":
            loc, msg = "body", f"not JSON ({(err.get('ctx') or {}).get('error', 'decode error')})"
        parts.append(f"{loc or 'body'}: {msg}")
    more = f" (and {len(parts) - MAX_PROBLEMS} more)" if len(parts) > MAX_PROBLEMS else ""
    return f"{prefix}: " + "; ".join(parts[:MAX_PROBLEMS]) + more
