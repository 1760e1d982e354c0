"""Hot reload of the routing file: poll, validate, swap atomically; a bad file never replaces a good table.

    watcher = RoutingWatcher(Path("/etc/kefu/routing.yaml"), interval_s=1.0).start()
    route = watcher.table.decide("intent", session_id)     # per request: one attribute read + a hash

Every `interval_s` a background thread stats and reads the file (it is a few hundred bytes), and when its
SHA-256 differs from the serving table's it parses and validates the new text. A valid file replaces the table
with a single attribute assignment, so a concurrent `decide` sees either the old or the new table, never a mix,
and no request waits on a lock. An invalid, half-written or vanished file is logged once per distinct content
and the previous table keeps serving. New content is accepted only when a second read `settle_s` later returns
the same bytes, so a file caught in the middle of a non-atomic write (an editor, `cat >`) is not half-applied.

Reading by path follows symlinks, so the Kubernetes ConfigMap update (a new `..2024_..` folder, then an atomic
rename of the `..data` symlink) and "write a temp file, rename it over" are both picked up; polling (rather than
inotify, and `watchfiles` is not installed) is what survives those renames without re-arming watches.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from services.canary.routing import RoutingError, RoutingTable

log = logging.getLogger(__name__)


class RoutingWatcher:
    """Serves `table` from `path` and reloads it on change. The first load must succeed (fail fast at start)."""

    def __init__(
        self,
        path: Path | str,
        interval_s: float = 1.0,
        settle_s: float = 0.02,
        on_change: Callable[[RoutingTable], None] | None = None,
    ):
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self.path = Path(path)
        self.interval_s = interval_s
        self.settle_s = settle_s
        self.on_change = on_change
        text, digest = self._read()
        self._table = RoutingTable.from_yaml(text, str(self.path))
        self._digest = digest
        self._rejected_digest: str | None = None
        self.reloads = 0
        self.rejected = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._check_lock = threading.Lock()

    @property
    def table(self) -> RoutingTable:
        """The serving table (replaced, never mutated)."""
        return self._table

    def _read(self) -> tuple[str, str]:
        try:
            raw = self.path.read_bytes()
        except OSError as e:
            raise RoutingError(f"{self.path}: cannot read the routing file: {e.strerror or e}") from e
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise RoutingError(f"{self.path}: not UTF-8 text ({e})") from e
        return text, hashlib.sha256(raw).hexdigest()

    def check(self) -> bool:
        """One poll: True when a new valid table was swapped in. Never raises for a bad file."""
        with self._check_lock:
            try:
                text, digest = self._read()
            except RoutingError as e:
                self._reject(str(e), digest=f"unreadable:{e}")
                return False
            if digest == self._digest or digest == self._rejected_digest:
                return False
            if self.settle_s > 0:
                time.sleep(self.settle_s)
                try:
                    again = self._read()
                except RoutingError:
                    return False  # gone again: the next poll decides
                if again[1] != digest:
                    return False  # still being written: the next poll sees the settled content
            try:
                table = RoutingTable.from_yaml(text, str(self.path))
            except RoutingError as e:
                self._reject(str(e), digest)
                return False
            self._table = table  # the atomic swap
            self._digest = digest
            self._rejected_digest = None
            self.last_error = None
            self.reloads += 1
        log.info("routing reloaded from %s: %s", self.path, _summary(table))
        if self.on_change is not None:
            try:
                self.on_change(table)
            except Exception:  # a faulty listener must not stop reloads
                log.exception("routing on_change listener failed")
        return True

    def _reject(self, message: str, digest: str) -> None:
        if digest == self._rejected_digest:
            return  # already reported this content
        self._rejected_digest = digest
        self.rejected += 1
        self.last_error = message
        log.error("routing file rejected, the previous table keeps serving: %s", message)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception:  # never let the thread die: the gateway would silently stop reloading
                log.exception("routing watcher poll failed")

    def start(self) -> RoutingWatcher:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="routing-watcher", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, 2 * self.interval_s))
            self._thread = None

    def __enter__(self) -> RoutingWatcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _summary(table: RoutingTable) -> str:
    parts = []
    for name, r in table.config.models.items():
        canary = f" canary {r.canary} {r.weight:g}% shadow {r.shadow:g}%" if r.canary else ""
        parts.append(f"{name}: stable {r.stable}{canary}")
    return "; ".join(parts) or "no models"
