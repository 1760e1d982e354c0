"""Log a repeated failure once per interval, with a count of the repeats held back.

During an outage every request meets the same failure; logging each one buries the log (12 MB in 15 minutes
was measured with a worker down) and hides the first line that mattered. `LogThrottle` writes the first
occurrence of each kind (`key`) at once, then at most one line per `interval_s` per key that says how many
more happened since the last line:

    intent call to intent@10.0.0.5:8001 failed: ... connection refused
    intent call to intent@10.0.0.5:8001 failed: ... connection refused (and 412 more like it in the last 30 s)

Keys are few and fixed by the caller (an upstream name, a replica label, a failure kind), never request data.
Pure logic over an injectable clock; tracebacks stay for the unexpected (the callers use `log.exception` there).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Entry:
    logged_at: float
    held_back: int = 0


class LogThrottle:
    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 1024,
    ):
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        self.logger = logger
        self.interval_s = interval_s
        self._clock = clock
        self._max_keys = max_keys
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()  # store calls log from worker threads

    def log(self, level: int, key: str, msg: str, *args: object) -> bool:
        """Logs `msg % args` unless `key` was logged less than `interval_s` ago; True when a line was written."""
        now = self._clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and now - entry.logged_at < self.interval_s:
                entry.held_back += 1
                return False
            held_back = entry.held_back if entry is not None else 0
            if entry is None and len(self._entries) >= self._max_keys:
                self._entries.pop(next(iter(self._entries)))
            self._entries[key] = _Entry(now)
        if held_back:
            since = self.interval_s if entry is None else now - entry.logged_at
            msg = f"{msg} (and %d more like it in the last %.0f s)"
            args = (*args, held_back, since)
        self.logger.log(level, msg, *args)
        return True

    def warning(self, key: str, msg: str, *args: object) -> bool:
        return self.log(logging.WARNING, key, msg, *args)

    def error(self, key: str, msg: str, *args: object) -> bool:
        return self.log(logging.ERROR, key, msg, *args)
