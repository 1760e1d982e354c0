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

With a routing file (`canary_routing.py`, issue 7) the router may answer `canary` (then the call goes to
`canary_pool`, and a failure is answered by stable instead, counted against the canary) or name a `shadow`
version (then `shadow.submit` mirrors the call in the background after stable answered). Classifier top labels
come from the worker's `label` output and the probability table uses the label order of the version that
answered (`version_labels`), since versions may order their labels differently.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from services.gateway.metrics import GatewayMetrics
from services.gateway.upstream import UpstreamError, WorkerPool

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    """Which version of a model answers this call, and in which role (stable / canary / shadow)."""

    version: str | None  # None = whatever the worker serves as latest
    role: str = "stable"
    shadow: str | None = None  # version to mirror this call to (answer compared, then discarded)


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
    def __init__(
        self,
        pool: WorkerPool,
        metrics: GatewayMetrics,
        router: ModelRouter | None = None,
        canary_pool: WorkerPool | None = None,
    ):
        self.pool, self.metrics = pool, metrics
        self.router = router or StableRouter(pool)
        self.canary_pool = canary_pool  # canary and shadow calls (own breakers); None: `pool`
        self.shadow: Any = None  # canary_routing.ShadowRunner when a routing file is configured
        self.version_labels: dict[tuple[str, str], list[str]] = {}  # (model, version) -> label order
        self._refreshing: asyncio.Task | None = None

    def _stable(self, model: str) -> str | None:
        stable = getattr(self.router, "stable_version", None)
        return stable(model) if stable is not None else self.router.route(model, None).version

    def versions(self) -> dict[str, str | None]:
        """The stable version each role calls now (None while unknown): what the cache key holds."""
        return {role: self._stable(model) for role, model in self.pool.models.items()}

    async def predict(self, role: str, texts: list[str], session_id: str | None = None) -> ModelAnswer:
        """Run `texts` through `role`'s model, at the version the router picks. Raises `UpstreamError`."""
        model = self.pool.models[role]
        route = self.router.route(model, session_id)
        if route.role == "canary":
            try:
                return await self.call(role, texts, route)
            except Exception as e:  # noqa: BLE001 - counted against the canary; the client gets stable's answer
                if not isinstance(e, UpstreamError):  # (call() counts its own UpstreamErrors)
                    self.metrics.model_requests.labels(
                        model, route.version or "unknown", "canary", "error"
                    ).inc()
                log.warning("canary %s v%s failed (%s): answering with stable", model, route.version, e)
                route = Route(self._stable(model), "stable")
        answer = await self.call(role, texts, route)
        if route.shadow is not None and self.shadow is not None:
            self.shadow.submit(role, texts, answer, route.shadow)
        return answer

    async def call(self, role: str, texts: list[str], route: Route) -> ModelAnswer:
        """One call of `route.version` of `role`'s model, with its metrics under `route.role`."""
        model = self.pool.models[role]
        pool = self.canary_pool if route.role != "stable" and self.canary_pool is not None else self.pool
        started = time.perf_counter()
        try:
            try:
                result = await pool.infer(role, texts, route.version)
            except UpstreamError as e:
                if e.status != 404 or route.version is None or route.role != "stable":
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
        try:
            if "probs" in result.outputs:
                answer = ModelAnswer(
                    role, model, version, route.role, predictions=self._classes(role, result.outputs, version)
                )
            elif "embedding" in result.outputs:
                answer = ModelAnswer(role, model, version, route.role, embeddings=result.outputs["embedding"])
            else:
                raise ValueError("response has neither probs nor embedding")
        except (ValueError, IndexError, TypeError, KeyError) as e:  # a malformed answer is a failed call
            self.metrics.model_requests.labels(*labels, "error").inc()
            raise UpstreamError(model, "error", f"malformed answer from v{version}: {e}") from e
        self.metrics.model_requests.labels(*labels, "ok").inc()
        self.metrics.model_duration.labels(*labels).observe(time.perf_counter() - started)
        for p in answer.predictions or []:
            self.metrics.model_predictions.labels(*labels, p.label).inc()
            self.metrics.model_confidence.labels(*labels).observe(p.confidence)
        return answer

    def labels_of(self, role: str, version: str) -> list[str] | None:
        """The label order of `version` of `role`'s model (None when unknown)."""
        known = self.version_labels.get((self.pool.models[role], version))
        if known:
            return known
        info = self.pool.info.get(role)
        if info and info.labels and (version == info.latest or len(info.versions) <= 1):
            return info.labels
        return None

    def _classes(self, role: str, outputs: dict, version: str) -> list[ClassPrediction]:
        probs = outputs["probs"]
        names = self.labels_of(role, version)
        names = names if names and len(names) == probs.shape[1] else None
        worker_labels = outputs.get("label")
        if probs.ndim != 2 or (worker_labels is not None and len(worker_labels) != len(probs)):
            raise ValueError(
                f"probs of shape {probs.shape} and {len(worker_labels or [])} labels do not match"
            )
        out = []
        for i, row in enumerate(probs):
            top = int(row.argmax())
            label = worker_labels[i] if worker_labels is not None else (names[top] if names else str(top))
            table = {(names[j] if names else str(j)): round(float(p), 6) for j, p in enumerate(row)}
            out.append(ClassPrediction(label, round(float(row[top]), 6), table))
        return out

    def schedule_refresh(self) -> None:
        """Re-read the workers' metadata soon (once, whatever the number of callers)."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.get_running_loop().create_task(self.pool.refresh())
