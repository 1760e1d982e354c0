"""Worker metrics (Prometheus). One prefix, `kefu_worker_`; labels `model` and `version` only.

| name | type | meaning |
|---|---|---|
| kefu_worker_request_success_total | counter | inference requests answered (one per HTTP request) |
| kefu_worker_request_failure_total | counter | inference requests failed or refused (4xx/5xx after routing to a model) |
| kefu_worker_request_duration_seconds | histogram | end to end, from arrival at the handler to the response |
| kefu_worker_queue_duration_seconds | histogram | per text: from enqueue to the start of its batch |
| kefu_worker_compute_duration_seconds | histogram | per batch: engine time |
| kefu_worker_batch_size | histogram | texts per batch (power-of-two buckets) |
| kefu_worker_queue_depth | gauge | texts waiting in the batcher |
| kefu_worker_inflight_requests | gauge | requests being handled |
| kefu_worker_model_ready | gauge | 1 when the version is loaded and warm |

With several worker processes, set PROMETHEUS_MULTIPROC_DIR (`python -m services.worker` does) and the
values of all processes are aggregated at /metrics.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PREFIX = "kefu_worker"
LABELS = ("model", "version")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

METRIC_NAMES = [
    f"{PREFIX}_request_success_total",
    f"{PREFIX}_request_failure_total",
    f"{PREFIX}_request_duration_seconds",
    f"{PREFIX}_queue_duration_seconds",
    f"{PREFIX}_compute_duration_seconds",
    f"{PREFIX}_batch_size",
    f"{PREFIX}_queue_depth",
    f"{PREFIX}_inflight_requests",
    f"{PREFIX}_model_ready",
]


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        kw = {"registry": registry} if registry is not None else {}
        self.success = Counter(f"{PREFIX}_request_success", "Inference requests answered", LABELS, **kw)
        self.failure = Counter(
            f"{PREFIX}_request_failure", "Inference requests failed or refused", LABELS, **kw
        )
        self.request_duration = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "End-to-end request duration",
            LABELS,
            buckets=LATENCY_BUCKETS,
            **kw,
        )
        self.queue_duration = Histogram(
            f"{PREFIX}_queue_duration_seconds",
            "Time a text waits for its batch",
            LABELS,
            buckets=LATENCY_BUCKETS,
            **kw,
        )
        self.compute_duration = Histogram(
            f"{PREFIX}_compute_duration_seconds",
            "Engine time per batch",
            LABELS,
            buckets=LATENCY_BUCKETS,
            **kw,
        )
        self.batch_size = Histogram(
            f"{PREFIX}_batch_size", "Texts per batch", LABELS, buckets=BATCH_BUCKETS, **kw
        )
        self.queue_depth = Gauge(
            f"{PREFIX}_queue_depth", "Texts waiting in the batcher", LABELS, multiprocess_mode="livesum", **kw
        )
        self.inflight = Gauge(
            f"{PREFIX}_inflight_requests", "Requests being handled", LABELS, multiprocess_mode="livesum", **kw
        )
        self.ready = Gauge(
            f"{PREFIX}_model_ready", "1 when loaded and warm", LABELS, multiprocess_mode="livemax", **kw
        )

    def observer(self, model: str, version: int) -> _BatchMetrics:
        return _BatchMetrics(self, model, str(version))


class _BatchMetrics:
    """The batcher's observer for one model version."""

    def __init__(self, metrics: WorkerMetrics, model: str, version: str):
        self._depth = metrics.queue_depth.labels(model, version)
        self._queue = metrics.queue_duration.labels(model, version)
        self._compute = metrics.compute_duration.labels(model, version)
        self._size = metrics.batch_size.labels(model, version)

    def queue_depth(self, depth: int) -> None:
        self._depth.set(depth)

    def batch_started(self, size: int, queue_seconds: list[float]) -> None:
        self._size.observe(size)
        for s in queue_seconds:
            self._queue.observe(s)

    def batch_finished(self, size: int, compute_seconds: float, ok: bool) -> None:
        self._compute.observe(compute_seconds)
