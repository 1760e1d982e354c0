"""Per-request records of a load run and what is computed from them (pure functions: tests drive them directly).

A record is one request the load generator sent: when it started, its kind (chat / faq_search / admin_read /
admin_create), the HTTP status (0: no answer: refused connection, timeout, unreadable body), its latency, whether
a chat answer was degraded, and the FAQ id of an acknowledged write. `summarize` gives the figures of a window
(rates, error share, p50/p99 per kind); `recovery_s` the time from a fault until answers are good again.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("chat", "faq_search", "admin_read", "admin_create")


@dataclass(frozen=True)
class Record:
    start: float  # epoch seconds
    kind: str
    status: int  # 0: no HTTP answer
    latency_ms: float
    degraded: bool = False
    faq_id: str | None = None

    @property
    def error(self) -> bool:
        """A client error as the SLO counts it: a 5xx or no answer at all (4xx are the client's own fault)."""
        return self.status == 0 or self.status >= 500

    @property
    def good(self) -> bool:
        return 200 <= self.status < 300 and not self.degraded

    @property
    def end(self) -> float:
        return self.start + self.latency_ms / 1000


class RecordWriter:
    """Appends records as JSON lines (nothing when `path` is None); the locust process owns one."""

    def __init__(self, path: str | None):
        self._file = open(path, "a", encoding="utf-8", buffering=1 << 16) if path else None  # noqa: SIM115

    def write(self, r: Record) -> None:
        if self._file is not None:
            row = [round(r.start, 4), r.kind, r.status, r.latency_ms, r.degraded, r.faq_id]
            self._file.write(json.dumps(row) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_records(path: Path) -> list[Record]:
    out = []
    for line in path.read_text("utf-8").splitlines():
        if line.strip():
            start, kind, status, latency, degraded, faq_id = json.loads(line)
            out.append(Record(start, kind, status, latency, degraded, faq_id))
    out.sort(key=lambda r: r.start)
    return out


def _column(path: str, name: str) -> list[str]:
    lines = (ROOT / path).read_text("utf-8").splitlines()
    return [json.loads(line)[name] for line in lines if line.strip()]


def messages(seed: int = 0) -> list[str]:
    """Chat messages: the demo KB's dev queries and the intent demo dev texts (what customers write)."""
    texts = queries() + _column("data/intent_cs_demo/dev.jsonl", "text")
    random.Random(seed).shuffle(texts)
    return texts


def queries() -> list[str]:
    return _column("data/faq_kb_demo/queries_dev.jsonl", "query")


def kb_ids() -> list[str]:
    return _column("data/faq_kb_demo/faq.jsonl", "id")


def _pct(values: Sequence[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if len(values) else None


def summarize(records: Iterable[Record], start: float | None = None, end: float | None = None) -> dict:
    """Figures of the requests started in [start, end): offered and answered rates, errors (5xx or no answer),
    their share, degraded chat answers, 4xx, and p50 / p99 latency of the successful ones per kind."""
    rows = [r for r in records if (start is None or r.start >= start) and (end is None or r.start < end)]
    if not rows:
        return {"requests": 0, "errors": 0, "error_pct": 0.0, "degraded": 0, "rate_rps": 0.0, "kinds": {}}
    t0 = start if start is not None else rows[0].start
    t1 = end if end is not None else max(r.start for r in rows)
    span = max(t1 - t0, 1e-9)
    kinds = {}
    for kind in sorted({r.kind for r in rows}):
        mine = [r for r in rows if r.kind == kind]
        ok = [r.latency_ms for r in mine if 200 <= r.status < 300]
        kinds[kind] = {
            "requests": len(mine),
            "errors": sum(r.error for r in mine),
            "p50_ms": _pct(ok, 50),
            "p95_ms": _pct(ok, 95),
            "p99_ms": _pct(ok, 99),
        }
    errors = sum(r.error for r in rows)
    statuses = Counter(str(r.status) for r in rows)
    return {
        "requests": len(rows),
        "rate_rps": round(len(rows) / span, 2),
        "answered_rps": round(sum(200 <= r.status < 300 for r in rows) / span, 2),
        "errors": errors,
        "error_pct": round(100 * errors / len(rows), 3),
        "client_4xx": sum(400 <= r.status < 500 for r in rows),
        "degraded": sum(r.degraded for r in rows),
        "statuses": dict(sorted(statuses.items())),
        "kinds": kinds,
    }


def recovery_s(records: Sequence[Record], fault_at: float, settle_s: float = 3.0) -> float | None:
    """Seconds from `fault_at` until the first request after which every request (started up to `settle_s`
    later, and all of them to the end of the records) is good (2xx, not degraded). 0 when nothing went wrong
    after the fault; None when the run ended before answers were good again for `settle_s`."""
    after = sorted((r for r in records if r.start >= fault_at), key=lambda r: r.start)
    bad = [r for r in after if not r.good]
    if not bad:
        return 0.0
    last_bad_end = max(r.end for r in bad)
    good_after = [r for r in after if r.start >= last_bad_end]
    if not good_after or good_after[-1].start - good_after[0].start < settle_s:
        return None
    return round(max(last_bad_end - fault_at, 0.0), 2)


def lost_writes(records: Iterable[Record], present: set[str]) -> list[str]:
    """Acknowledged FAQ writes (201 with an id) that the store no longer has."""
    return sorted(r.faq_id for r in records if r.faq_id and r.status == 201 and r.faq_id not in present)


def find_knee(steps: Sequence[dict], p99_slo_ms: float, max_error_pct: float) -> dict | None:
    """The step with the highest offered rate whose chat p99 is within the SLO and whose error share is within
    budget, among the steps before the first one that failed (a later lucky step does not count)."""
    knee = None
    for step in sorted(steps, key=lambda s: s["target_rps"]):
        chat = step["summary"]["kinds"].get("chat", {})
        p99 = chat.get("p99_ms")
        if p99 is None or p99 > p99_slo_ms or step["summary"]["error_pct"] > max_error_pct:
            break
        knee = step
    return knee


def _edge(samples: Sequence[float]) -> int:
    """Samples compared at each end: the first and last quarter, at least 3."""
    if len(samples) < 6:
        raise ValueError(f"need at least 6 samples, got {len(samples)}")
    return max(3, len(samples) // 4)


def flat_within(samples: Sequence[float], pct: float) -> tuple[bool, float]:
    """Whether the mean of the last quarter of the samples is within `pct` % of the mean of the first quarter
    (memory flat over a soak); returns the change in %."""
    edge = _edge(samples)
    first, last = float(np.mean(samples[:edge])), float(np.mean(samples[-edge:]))
    change = 100 * (last - first) / first
    return abs(change) <= pct, round(change, 2)


def growth(samples: Sequence[int]) -> int:
    """Growth of a count (open file descriptors) over a soak: the median of the last quarter of the samples
    minus the median of the first quarter. Medians over a quarter, because the count moves by a few with the
    connections open at the moment of each sample (±8 around a flat line in a 10-minute soak here): a leak
    moves the median, a sample taken mid-connection does not."""
    edge = _edge(samples)
    return int(np.median(samples[-edge:]) - np.median(samples[:edge]))
