"""A circuit breaker per upstream (one worker replica, or the FAQ store).

    closed ──(failure_threshold consecutive failures)──► open ──(interval)──► half-open
      ▲                                                   ▲                         │
      └──────────────── trial call succeeds ──────────────┼──── trial call fails ───┘ (interval × backoff)

- closed: every call goes through; consecutive failures are counted, a success resets the count.
- open: calls are refused at once (`allow()` is False) so a dead replica costs no timeout; after the current
  interval the breaker lets `half_open_calls` trial calls through (half-open).
- half-open: a trial that succeeds closes the breaker; one that fails opens it again for a longer interval.
  Other callers are refused while the trials are in flight.

The interval starts at `reset_timeout_s`, grows by `backoff` after each failed trial and is capped at
`max_reset_timeout_s`: a replica that comes back is tried again within `max_reset_timeout_s` however long it was
down (recovery follows the upstream within about that), while a replica that stays down costs one trial call per
interval. A success (closing the breaker) starts the next outage at `reset_timeout_s` again.

Only failures that say the upstream is unhealthy count (connect errors, timeouts, 5xx); a 4xx is the caller's
fault and counts as a success for the breaker. State changes are reported through `on_change(state)` (the
gateway sets `kefu_gateway_circuit_state`: 0 closed, 1 half-open, 2 open). Pure logic, no I/O, one event loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import IntEnum


class BreakerState(IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitBreaker:
    def __init__(
        self,
        failure_threshold: int = 5,
        reset_timeout_s: float = 0.5,
        half_open_calls: int = 1,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[BreakerState], None] | None = None,
        max_reset_timeout_s: float | None = None,
        backoff: float = 2.0,
    ):
        max_reset_timeout_s = reset_timeout_s if max_reset_timeout_s is None else max_reset_timeout_s
        if failure_threshold < 1 or reset_timeout_s <= 0 or half_open_calls < 1:
            raise ValueError("failure_threshold >= 1, reset_timeout_s > 0 and half_open_calls >= 1 required")
        if max_reset_timeout_s < reset_timeout_s or backoff < 1:
            raise ValueError("max_reset_timeout_s >= reset_timeout_s and backoff >= 1 required")
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self.max_reset_timeout_s = max_reset_timeout_s
        self.backoff = backoff
        self.interval_s = reset_timeout_s  # how long the breaker stays open this time
        self.half_open_calls = half_open_calls
        self._clock = clock
        self._on_change = on_change
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trials = 0  # trial calls admitted while half-open and not yet finished
        if on_change:
            on_change(self._state)

    @property
    def state(self) -> BreakerState:
        """The state now (an open breaker whose timeout has passed reads half-open)."""
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.interval_s:
            self._set(BreakerState.HALF_OPEN)
            self._trials = 0
        return self._state

    def allow(self) -> bool:
        """May a call go through now? A True in half-open reserves a trial: report its outcome."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and self._trials < self.half_open_calls:
            self._trials += 1
            return True
        return False

    def record_success(self) -> None:
        self._failures = 0
        if self._state is not BreakerState.CLOSED:
            self._trials = 0
            self.interval_s = self.reset_timeout_s
            self._set(BreakerState.CLOSED)

    def record_failure(self) -> None:
        if self._state is BreakerState.HALF_OPEN:
            self._open(min(self.interval_s * self.backoff, self.max_reset_timeout_s))
            return
        self._failures += 1
        if self._state is BreakerState.CLOSED and self._failures >= self.failure_threshold:
            self._open(self.reset_timeout_s)

    def _open(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._opened_at = self._clock()
        self._trials = 0
        self._failures = 0
        self._set(BreakerState.OPEN)

    def _set(self, state: BreakerState) -> None:
        if state is not self._state:
            self._state = state
            if self._on_change:
                self._on_change(state)
