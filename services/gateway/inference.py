"""Every model call of the gateway goes through `ModelClient.predict(role, texts, session_id)`.

That one function asks a `ModelRouter` which version to call (the seam for canary / shadow routing, issue 7),
calls the workers through `WorkerPool`, and records per-version metrics:
`kefu_gateway_model_requests_total{model, version, role, outcome}`, `_model_duration_seconds`,
`_model_predictions_total{label}` and `_model_confidence` (classifiers: top-label probability; the FAQ
encoder's confidence is the top FAQ score, recorded by `knowledge.py`). `role` is the routing role
(stable / canary / shadow); `version` is the `model_version` the worker answered with.

The default router, `StableRouter`, sends everything to "stable = the latest version the workers serve"
(from the metadata `WorkerPool.refresh()` reads), with no canary and no shadow. Calls name that version
explicitly, so every answer in one refresh period comes from the same version, and the cache key (which holds
the versions in use) always matches what a fresh call would compute. A worker that no longer serves the pinned
version (404 after a hot reload) triggers a metadata refresh and the call is repeated unversioned.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from services.gateway.metrics import GatewayMetrics
from services.gateway.upstream import UpstreamError, WorkerPool

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    """Which version of a model answers this call, and in which role (stable / canary / shadow)."""

    version: str | None  # None = whatever the worker serves as latest
    role: str = "stable"


class ModelRouter(Protocol):
    def route(self, model: str, session_id: str | None) -> Route:
        """The version of `model` (the worker's model name) that answers a call for `session_id`."""
        ...


class StableRouter:
    """Stable = the latest version the workers serve; no canary, no shadow."""

    def __init__(self, pool: WorkerPool):
        self.pool = pool

    def route(self, model: str, session_id: str | None) -> Route:
        role = next((r for r, m in self.pool.models.items() if m == model), None)
        info = self.pool.info.get(role) if role else None
        return Route(info.latest if info else None, "stable")


@dataclass(frozen=True)
class ClassPrediction:
    label: str
    confidence: float  # probability of `label`
    probs: dict[str, float]


@dataclass(frozen=True)
class ModelAnswer:
    role: str  # intent / sentiment / faq
    model: str
    version: str
    route_role: str
    predictions: list[ClassPrediction] | None = None  # classifiers
    embeddings: np.ndarray | None = None  # the FAQ encoder: float32 [n, dim], L2-normalised


class ModelClient:
    def __init__(self, pool: WorkerPool, metrics: GatewayMetrics, router: ModelRouter | None = None):
        self.pool, self.metrics = pool, metrics
        self.router = router or StableRouter(pool)
        self._refreshing: asyncio.Task | None = None

    def versions(self) -> dict[str, str | None]:
        """The version each role calls now (None while unknown): what the cache key holds."""
        return {role: self.router.route(model, None).version for role, model in self.pool.models.items()}

    async def predict(self, role: str, texts: list[str], session_id: str | None = None) -> ModelAnswer:
        """Run `texts` through `role`'s model. Raises `UpstreamError`."""
        model = self.pool.models[role]
        route = self.router.route(model, session_id)
        started = time.perf_counter()
        try:
            try:
                result = await self.pool.infer(role, texts, route.version)
            except UpstreamError as e:
                if e.status != 404 or route.version is None:
                    raise
                log.info(
                    "%s v%s no longer served: refreshing metadata, calling unversioned", model, route.version
                )
                self.schedule_refresh()
                result = await self.pool.infer(role, texts, None)
        except UpstreamError:
            self.metrics.model_requests.labels(model, route.version or "unknown", route.role, "error").inc()
            raise
        version = result.model_version or route.version or "unknown"
        labels = (model, version, route.role)
        self.metrics.model_requests.labels(*labels, "ok").inc()
        self.metrics.model_duration.labels(*labels).observe(time.perf_counter() - started)
        if "probs" in result.outputs:
            predictions = self._classes(role, result.outputs)
            for p in predictions:
                self.metrics.model_predictions.labels(*labels, p.label).inc()
                self.metrics.model_confidence.labels(*labels).observe(p.confidence)
            return ModelAnswer(role, model, version, route.role, predictions=predictions)
        if "embedding" in result.outputs:
            return ModelAnswer(role, model, version, route.role, embeddings=result.outputs["embedding"])
        raise UpstreamError(self.pool.models[role], "error", "response has neither probs nor embedding")

    def _classes(self, role: str, outputs: dict) -> list[ClassPrediction]:
        probs = outputs["probs"]
        info = self.pool.info.get(role)
        names = info.labels if info and info.labels and len(info.labels) == probs.shape[1] else None
        out = []
        for i, row in enumerate(probs):
            top = int(row.argmax())
            label = names[top] if names else outputs.get("label", [str(top)] * len(probs))[i]
            table = {(names[j] if names else str(j)): round(float(p), 6) for j, p in enumerate(row)}
            out.append(ClassPrediction(label, round(float(row[top]), 6), table))
        return out

    def schedule_refresh(self) -> None:
        """Re-read the workers' metadata soon (once, whatever the number of callers)."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.get_running_loop().create_task(self.pool.refresh())
