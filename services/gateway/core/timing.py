"""Where a request's time goes, for the `Server-Timing` response header (and `make bench-gateway`).

    timings = Timings()
    with timings.measure("intent"): ...
    response.headers["Server-Timing"] = timings.header()
    # total;dur=12.1, gateway;dur=3.0, intent;dur=7.9, sentiment;dur=8.4, faq_embed;dur=8.0, faq_store;dur=1.2

`total` is the whole request inside the gateway; each upstream entry is the time spent waiting for that call
(intent, sentiment, faq_embed, faq_store; concurrent calls overlap); `gateway` is `total` minus the wall time
during which at least one upstream call was in flight: the gateway's own work (auth, normalisation, policy,
sessions, cache, serialisation).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class Timings:
    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.durations: dict[str, float] = {}
        self._active = 0
        self._busy_since = 0.0
        self._busy = 0.0  # wall seconds with at least one upstream call in flight

    @contextmanager
    def measure(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        if self._active == 0:
            self._busy_since = start
        self._active += 1
        try:
            yield
        finally:
            end = time.perf_counter()
            self._active -= 1
            if self._active == 0:
                self._busy += end - self._busy_since
            self.durations[name] = self.durations.get(name, 0.0) + end - start

    def header(self) -> str:
        total = time.perf_counter() - self.started
        parts = [("total", total), ("gateway", max(0.0, total - self._busy)), *self.durations.items()]
        return ", ".join(f"{name};dur={seconds * 1000:.2f}" for name, seconds in parts)
