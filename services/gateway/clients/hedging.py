"""Hedged calls to replicas ("The Tail at Scale", Dean & Barroso 2013): when the first replica has not answered
after `hedge_after_s`, the same request also goes to the next replica, and the first good answer wins.

Why: a replica that hangs (stopped process, cut network) answers nothing until the call timeout (2 s), and
until its breaker opens every call that reaches it, the breaker's half-open trials included, waits that long:
measured, chat p99 rose to 2.1 s while one of two replicas hung (docs/reliability.md). A hedge bounds that
wait by `hedge_after_s`.

- **Retries and hedges share `attempts`** (1 + `retries`): a failed attempt (connect error, timeout, 5xx) goes
  to the next replica as before; a slow one gets one hedge.
- **Budget**: hedges are at most `ratio` of the calls over time (a token bucket: each call earns `ratio`, a
  hedge costs 1, at most `burst` kept), so a slow upstream under overload is not sent twice the load.
- **The losing attempt is not cancelled**: it runs to its own answer or timeout in the background, so the
  replica's breaker still learns that it hangs (a cancelled call would record nothing, and every later call
  would pay the hedge delay instead of the breaker opening).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

R = TypeVar("R")
T = TypeVar("T")


class Retryable(Exception):
    """Raised by an attempt whose failure another replica may not share (connect error, timeout, 5xx)."""


class Failed(Retryable):
    """A `Retryable` carrying the caller's own error, to raise again when every attempt failed."""

    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.error = error


class HedgeBudget:
    def __init__(self, ratio: float = 0.1, burst: float = 10.0):
        self.ratio, self.burst, self.tokens = ratio, burst, burst

    def earn(self) -> None:
        self.tokens = min(self.burst, self.tokens + self.ratio)

    def spend(self) -> bool:
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


def _detach(task: asyncio.Task) -> None:
    """Let a losing attempt finish on its own; its outcome was recorded by the attempt itself."""
    task.add_done_callback(lambda t: t.cancelled() or t.exception())


async def first_good(
    replicas: Iterator[R],
    attempt: Callable[[R, bool], Awaitable[T]],
    *,
    attempts: int,
    hedge_after_s: float = 0.0,
    budget: HedgeBudget | None = None,
) -> T:
    """`attempt(replica, is_extra)` on the first replica of `replicas` (lazily drawn: the iterator may consult
    breakers), then on the next one after a `Retryable` failure, or after `hedge_after_s` without an answer
    (one hedge, within `budget`); at most `attempts` calls. Returns the first answer; raises the last
    `Retryable` when every call failed, `LookupError` when no replica could be called, and anything else an
    attempt raises at once."""
    pending: set[asyncio.Task] = set()
    used, hedged, last = 0, False, None

    def launch() -> bool:
        nonlocal used
        if used >= attempts:
            return False
        replica = next(replicas, None)
        if replica is None:
            return False
        pending.add(asyncio.ensure_future(attempt(replica, used > 0)))
        used += 1
        return True

    if budget is not None:
        budget.earn()
    if not launch():
        raise LookupError("no replica to call")
    try:
        while pending:
            wait_s = hedge_after_s if hedge_after_s > 0 and not hedged and used < attempts else None
            done, _ = await asyncio.wait(pending, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
            if not done:  # the hedge delay passed with no answer
                hedged = True
                if budget is None or budget.spend():
                    launch()
                continue
            for task in done:
                pending.discard(task)
                error = task.exception()
                if error is None:
                    return task.result()
                if not isinstance(error, Retryable):
                    raise error
                last = error
            if not pending:
                launch()
    finally:
        for task in pending:
            _detach(task)
    assert last is not None
    raise last
