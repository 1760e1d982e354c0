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

One chat turn needs intent, sentiment and the FAQ encoder on the same text. `plan_combined` /
`predict_combined` send them as ONE request (`POST /v2/multi/infer`: the text travels and is tokenised once)
when `combined_model_calls` is on, every route of the turn goes to the same pool and the same worker URLs
(the local stack, or one Kubernetes Service serving all three models), and those workers advertise the
extension `multi_model_infer` (`GET /v2`, read in the background and re-read every `EXTENSION_TTL_S`; until
known, and for workers without it, one request per model as before). Routing, versions and metrics stay per
model: each model's version comes from the router as above, its answer is recorded under its own
`{model, version, role}` and its upstream's duration, and its replica breaker counts its own outcome. A model
that fails inside a combined answer (or a canary whose combined call failed) takes the one-model path, with
its retries, 404 refresh and canary fallback, so failures are answered as before.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import numpy as np

from services.gateway.clients.breaker import BreakerState
from services.gateway.clients.hedging import Failed
from services.gateway.clients.upstream import (
    INPUT_NAME,
    UPSTREAM_NAMES,
    InferResult,
    UpstreamError,
    WorkerPool,
    decode_outputs,
)
from services.gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)

MULTI_EXTENSION = "multi_model_infer"
EXTENSION_TTL_S = 30.0  # how long a worker's `GET /v2` answer (its extensions) is trusted


class CombinedRefused(Exception):
    """The worker refused the combined request itself (4xx: no such endpoint): one request per model."""


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
        self.combined = bool(getattr(pool.settings, "combined_model_calls", False))
        self._multi: dict[str, tuple[bool, float]] = {}  # worker URL -> (offers multi_model_infer, when read)
        self._multi_probes: dict[str, asyncio.Task] = {}

    def _stable(self, model: str) -> str | None:
        stable = getattr(self.router, "stable_version", None)
        return stable(model) if stable is not None else self.router.route(model, None).version

    def versions(self) -> dict[str, str | None]:
        """The stable version each role calls now (None while unknown): what the cache key holds."""
        return {role: self._stable(model) for role, model in self.pool.models.items()}

    async def predict(self, role: str, texts: list[str], session_id: str | None = None) -> ModelAnswer:
        """Run `texts` through `role`'s model, at the version the router picks. Raises `UpstreamError`."""
        return await self._predict_routed(role, texts, self.router.route(self.pool.models[role], session_id))

    async def _predict_routed(self, role: str, texts: list[str], route: Route) -> ModelAnswer:
        model = self.pool.models[role]
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
        return self._answer(role, route, result, started)

    def _answer(self, role: str, route: Route, result: InferResult, started: float) -> ModelAnswer:
        """A worker's result as `role`'s answer, with the per-version metrics. Raises `UpstreamError`."""
        model = self.pool.models[role]
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

    # ── one request for the models of a chat turn ───────────────────────────────────────────────────

    def _pool_for(self, route: Route) -> WorkerPool:
        return self.canary_pool if route.role != "stable" and self.canary_pool is not None else self.pool

    def plan_combined(
        self, roles: list[str], session_id: str | None, n_texts: int = 1
    ) -> dict[str, Route] | None:
        """Each role's route when one combined request can carry them all (see the module doc), else None:
        the same pool and worker URLs for every route, combining on, every replica's breaker closed (a replica
        being probed back takes one-model calls), the texts within every model's batch size, and every worker
        URL known to offer `multi_model_infer` (asked in the background when not known)."""
        if not self.combined or len(roles) < 2:
            return None
        routes = {role: self.router.route(self.pool.models[role], session_id) for role in roles}
        pools = [self._pool_for(r) for r in routes.values()]
        pool = pools[0]
        if any(p is not pool for p in pools):
            return None
        urls = {tuple(r.url for r in pool.replicas[role]) for role in roles}
        if len(urls) != 1:
            return None
        for role in roles:
            if n_texts > pool.batch_size(role):
                return None
            if any(r.breaker.state is not BreakerState.CLOSED for r in pool.replicas[role]):
                return None
        now, offered = time.monotonic(), True
        for url in next(iter(urls)):
            known = self._multi.get(url)
            if known is None or now - known[1] > EXTENSION_TTL_S:
                self._read_extensions_soon(pool, roles[0], url)
            offered = offered and known is not None and known[0]
        return routes if offered else None

    def _read_extensions_soon(self, pool: WorkerPool, role: str, url: str) -> None:
        task = self._multi_probes.get(url)
        if task is None or task.done():
            self._multi_probes[url] = asyncio.get_running_loop().create_task(
                self._read_extensions(pool, role, url)
            )

    async def _read_extensions(self, pool: WorkerPool, role: str, url: str) -> None:
        try:
            response = await pool.clients[role].get(url + "/v2")
            offers = response.status_code == 200 and MULTI_EXTENSION in (
                response.json().get("extensions") or []
            )
        except Exception:  # noqa: BLE001 - anything but a clear yes means one request per model
            offers = False
        self._multi[url] = (offers, time.monotonic())

    async def predict_combined(
        self, routes: dict[str, Route], texts: list[str]
    ) -> dict[str, ModelAnswer | BaseException]:
        """Every role's answer (or its `UpstreamError`) from one combined request (`plan_combined`'s
        routes); a role that failed inside it takes the one-model path (module doc)."""
        pool = self._pool_for(next(iter(routes.values())))
        started = time.perf_counter()
        out: dict[str, ModelAnswer | BaseException] = {}
        retry: dict[str, Route] = {}
        try:
            results: dict[str, InferResult | UpstreamError] = await self._call_combined(pool, routes, texts)
        except (
            UpstreamError
        ) as e:  # no replica answered: stable fails as its own call would; canary falls back
            for role, route in routes.items():
                model = self.pool.models[role]
                self.metrics.model_requests.labels(
                    model, route.version or "unknown", route.role, "error"
                ).inc()
                if route.role == "canary":
                    log.warning("canary %s v%s failed (%s): answering with stable", model, route.version, e)
                    retry[role] = Route(self._stable(model), "stable")
                else:
                    out[role] = e
            results = {}
        for role, result in results.items():
            route = routes[role]
            if isinstance(result, InferResult):
                try:
                    out[role] = self._answer(role, route, result, started)
                except UpstreamError as e:
                    out[role] = e
                    continue
                if route.shadow is not None and self.shadow is not None:
                    self.shadow.submit(role, texts, out[role], route.shadow)
            elif result.status is not None and 400 <= result.status < 500 and result.status != 404:
                self.metrics.model_requests.labels(
                    self.pool.models[role], route.version or "unknown", route.role, "error"
                ).inc()
                out[role] = result  # the request's fault: a one-model call would be refused alike
            else:
                retry[role] = route  # 404 (version gone) or 5xx: the one-model path, with its retries
        if retry:
            answers = await asyncio.gather(
                *(self._predict_routed(role, texts, route) for role, route in retry.items()),
                return_exceptions=True,
            )
            out.update(zip(retry, answers, strict=True))
        return out

    async def _call_combined(
        self, pool: WorkerPool, routes: dict[str, Route], texts: list[str]
    ) -> dict[str, InferResult | UpstreamError]:
        """One `POST /v2/multi/infer`, retried or hedged on another replica (connect error, timeout, 5xx, no
        answer after `hedge_after_s`) like a one-model call; each role's breaker and upstream duration record
        that role's outcome."""
        roles = list(routes)
        models = []
        for role in roles:
            ref = {"name": pool.models[role]}
            if routes[role].version:
                ref["version"] = routes[role].version
            models.append(ref)
        body = json.dumps(
            {
                "inputs": [{"name": INPUT_NAME, "shape": [len(texts)], "datatype": "BYTES", "data": texts}],
                "models": models,
            },
            ensure_ascii=False,
        ).encode("utf-8")
        at = {role: {r.url: r for r in pool.replicas[role]} for role in roles}
        client = pool.clients[roles[0]]

        async def attempt(replica, extra: bool) -> dict[str, InferResult | UpstreamError]:
            if extra:
                for role in roles:
                    self.metrics.upstream_retries.labels(UPSTREAM_NAMES[role]).inc()
            started = time.perf_counter()
            try:
                response = await client.post(
                    replica.url + "/v2/multi/infer",
                    content=body,
                    headers={"content-type": "application/json"},
                )
                if response.status_code == 200:
                    return self._combined_results(pool, roles, at, replica.url, response.json(), started)
                failed = UpstreamError(
                    "models", "error", f"HTTP {response.status_code}", response.status_code
                )
                if response.status_code < 500:  # a worker without the endpoint: one request per model
                    self._multi[replica.url] = (False, time.monotonic())
                    raise CombinedRefused(failed.message)
            except httpx.TimeoutException as e:
                failed = UpstreamError("models", "timeout", f"{replica.url} timed out ({type(e).__name__})")
            except httpx.HTTPError as e:
                failed = UpstreamError("models", "error", f"{replica.url} unreachable ({type(e).__name__})")
            except (ValueError, KeyError, TypeError) as e:
                raise UpstreamError("models", "error", f"malformed multi-model response: {e}") from e
            for role in roles:
                at[role][replica.url].breaker.record_failure()
                self._observe_upstream(role, failed.outcome, started)
            raise Failed(failed)

        try:
            # not gated by one role's breakers: a replica whose intent engine fails still answers the others
            return await pool.first_good(roles[0], attempt, breakers=False)
        except Failed as e:
            raise e.error from None
        except LookupError:
            raise UpstreamError("models", "circuit_open", "no replica to call") from None

    def _combined_results(
        self, pool: WorkerPool, roles: list[str], at: dict, url: str, payload: dict, started: float
    ) -> dict[str, InferResult | UpstreamError]:
        results = payload["results"]
        if len(results) != len(roles):
            raise ValueError(f"{len(results)} results for {len(roles)} models")
        out: dict[str, InferResult | UpstreamError] = {}
        for role, result in zip(roles, results, strict=True):
            breaker = at[role][url].breaker
            if "outputs" in result:
                version, outputs = decode_outputs(result)
                out[role] = InferResult(version, outputs)
                breaker.record_success()
                self._observe_upstream(role, "ok", started)
                continue
            status = int(result["status"])
            message = f"HTTP {status}: {result.get('error')}"
            out[role] = UpstreamError(UPSTREAM_NAMES[role], "error", message, status)
            if status >= 500:
                breaker.record_failure()
            else:
                breaker.record_success()
            self._observe_upstream(role, "error", started)
        return out

    def _observe_upstream(self, role: str, outcome: str, started: float) -> None:
        elapsed = time.perf_counter() - started
        self.metrics.upstream_duration.labels(UPSTREAM_NAMES[role], outcome).observe(elapsed)

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
