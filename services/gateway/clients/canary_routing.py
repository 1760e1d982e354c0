"""Canary routing and shadow traffic in the gateway (issue 7): the routing file decides, per model call, which
version answers and whether the call is mirrored to the candidate.

    KEFU_GATEWAY_ROUTING_FILE=runs/routing.yaml python -m services.gateway     # empty: StableRouter, no canary

- `CanaryRouter` implements `inference.ModelRouter` over a hot-reloaded `RoutingWatcher`
  (`services/canary/watcher.py`): `decide(model, sticky_id)` is sticky by tenant and session id (the
  orchestrator passes `SessionKey.sticky_id`, so two tenants' equal session ids split independently; calls
  without a session, /v1/intent and the like, draw at random), weights 0 and 100 are exact, and a reload
  swaps the table atomically (no request waits, none is dropped). A model absent from the routing file is
  served as before (the latest version the workers serve).
- Canary and shadow calls go through their own `CanaryWorkerPool`: its own connections and circuit breakers
  (a failing candidate never opens stable's breakers), upstream names suffixed `_canary`, and URLs from
  `KEFU_GATEWAY_CANARY_WORKERS` (in the cluster: the canary Services) or else the stable workers. Versions are
  named in the path, `/v2/models/{m}/versions/{v}/infer`.
- A canary call that fails is answered by stable (`ModelClient.predict`): the failure is counted against the
  canary version (`kefu_gateway_model_requests_total{role="canary", outcome="error"}`), never shown to the client.
- `ShadowRunner`: after stable answered a shadowed call, the candidate is called in a background task with its
  own timeout (`shadow_timeout_s`) and at most `shadow_max_inflight` at once; beyond that, shadow work is
  dropped and counted (`kefu_gateway_shadow_dropped_total{reason="saturated"}`). It compares the answers:
  classifiers: same top label; the FAQ encoder: same top-1 FAQ of a dense store search with each embedding
  (both sides searched the same way, so the comparison is like for like). Records
  `kefu_gateway_shadow_comparisons_total{agree}`, `_shadow_confidence_delta` (candidate minus stable: top-label
  probability, or top-1 cosine) and the candidate's per-version model metrics with role="shadow". Nothing a
  shadow call does (error, hang, garbage) reaches the client or delays its answer. It keeps no state per
  session or tenant (the shadow draw is random per call; comparisons are metrics by model and version only).
- The FAQ encoder is never a live canary: the knowledge base is indexed by one encoder version, so a canary
  weight on it mirrors those calls instead (shadow only); promoting it makes the knowledge base re-index at its
  next refresh (`knowledge.py`). Its shadow agreement says whether the candidate finds the same FAQ in the
  current index, which a re-trained encoder (a new embedding space) is expected to fail until re-indexed.
- The response cache is keyed by the stable version (`ModelClient.versions()`): a text answered from the cache
  gets stable's answer whatever its session's side, and is neither sent to the canary nor mirrored. Canary and
  shadow see cache misses only (`make canary-demo` turns the cache off so the gates see every request).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import httpx
import numpy as np

from services.canary.routing import RoutingTable
from services.canary.watcher import RoutingWatcher
from services.gateway.clients.inference import ModelAnswer, ModelClient, Route
from services.gateway.clients.upstream import ROLES, UpstreamError, WorkerPool
from services.gateway.metrics import GatewayMetrics
from services.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

# (texts, vectors) -> per text (top-1 FAQ id or None, its cosine)
FaqTop1 = Callable[[Sequence[str], np.ndarray], Awaitable[list[tuple[str | None, float]]]]


class CanaryWorkerPool(WorkerPool):
    """The workers canary and shadow versions are called on: own connections and breakers, `<name>_canary`."""

    def _replica(self, name: str, url: str, clock):
        return super()._replica(f"{name}_canary", url, clock)

    def _observe(self, upstream: str, outcome: str, started: float) -> None:
        super()._observe(f"{upstream}_canary", outcome, started)


def canary_pool(
    settings: GatewaySettings, metrics: GatewayMetrics, transport: Any = None
) -> CanaryWorkerPool:
    """A pool over `settings.canary_workers` (per role; the stable workers where a role has none)."""
    workers = {role: settings.canary_workers.get(role) or settings.workers[role] for role in ROLES}
    return CanaryWorkerPool(settings.model_copy(update={"workers": workers}), metrics, transport=transport)


class CanaryRouter:
    """`ModelRouter` over the routing file: the version (and role) answering each call, and its shadow."""

    def __init__(self, watcher: RoutingWatcher, pool: WorkerPool, encoder_model: str | None = None):
        self.watcher, self.pool, self.encoder_model = watcher, pool, encoder_model

    @property
    def table(self) -> RoutingTable:
        return self.watcher.table

    def _latest(self, model: str) -> str | None:
        role = next((r for r, m in self.pool.models.items() if m == model), None)
        info = self.pool.info.get(role) if role else None
        return info.latest if info else None

    def stable_version(self, model: str) -> str | None:
        """The routing's stable version of `model` (the latest served when the model is not routed)."""
        route = self.table.config.models.get(model)
        return route.stable if route is not None else self._latest(model)

    def route(self, model: str, session_id: str | None) -> Route:
        decision = self.table.decide(model, session_id)
        if decision.version is None:
            return Route(self._latest(model), "stable")
        if decision.role == "canary" and model == self.encoder_model:
            # the knowledge base is indexed by stable's encoder: mirror instead of serving
            return Route(self.table.config.models[model].stable, "stable", shadow=decision.version)
        return Route(decision.version, decision.role, shadow=decision.shadow_version)


class ShadowRunner:
    """Calls the shadow version in the background and compares it with stable's answer (see module doc)."""

    def __init__(
        self,
        models: ModelClient,
        metrics: GatewayMetrics,
        timeout_s: float,
        max_inflight: int,
        faq_top1: FaqTop1 | None = None,
    ):
        self.models, self.metrics = models, metrics
        self.timeout_s, self.max_inflight = timeout_s, max_inflight
        self.faq_top1 = faq_top1
        self._tasks: set[asyncio.Task] = set()

    @property
    def inflight(self) -> int:
        return len(self._tasks)

    def submit(self, role: str, texts: list[str], stable: ModelAnswer, version: str) -> None:
        """Start the shadow call of `texts` to `version` (returns at once; dropped and counted when saturated)."""
        if len(self._tasks) >= self.max_inflight:
            self.metrics.shadow_dropped.labels(stable.model, "saturated").inc()
            return
        task = asyncio.get_running_loop().create_task(self._run(role, list(texts), stable, version))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, role: str, texts: list[str], stable: ModelAnswer, version: str) -> None:
        model = stable.model
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout_s):
                shadow = await self.models.call(role, texts, Route(version, "shadow"))
                await self._compare(texts, stable, shadow)
        except TimeoutError:
            self.metrics.model_requests.labels(model, version, "shadow", "timeout").inc()
            log.info("shadow call of %s v%s timed out after %.1f s", model, version, self.timeout_s)
        except UpstreamError as e:  # counted by ModelClient.call
            log.info("shadow call of %s v%s failed: %s", model, version, e.message)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - garbage from the candidate is its problem, never the client's
            self.metrics.model_requests.labels(model, version, "shadow", "error").inc()
            log.warning("shadow answer of %s v%s unusable: %s: %s", model, version, type(e).__name__, e)
        else:
            log.debug("shadow %s v%s compared in %.3f s", model, version, time.perf_counter() - started)

    async def _compare(self, texts: list[str], stable: ModelAnswer, shadow: ModelAnswer) -> None:
        if stable.predictions is not None:
            pairs = [
                (s.label, s.confidence, c.label, c.confidence)
                for s, c in _zip(stable.predictions, shadow.predictions)
            ]
        else:
            if self.faq_top1 is None:
                return  # no knowledge base to search: nothing to compare
            if shadow.embeddings is None or len(shadow.embeddings) != len(texts):
                raise ValueError("the shadow encoder returned no embedding per text")
            mine = await self.faq_top1(texts, stable.embeddings)
            theirs = await self.faq_top1(texts, shadow.embeddings)
            for _, score in theirs:
                self.metrics.model_confidence.labels(shadow.model, shadow.version, "shadow").observe(score)
            pairs = [(s[0], s[1], c[0], c[1]) for s, c in zip(mine, theirs, strict=True)]
        labels = (stable.model, stable.version, shadow.version)
        for s_top, s_conf, c_top, c_conf in pairs:
            agree = s_top is not None and s_top == c_top
            self.metrics.shadow_comparisons.labels(*labels, "true" if agree else "false").inc()
            self.metrics.shadow_confidence_delta.labels(*labels).observe(c_conf - s_conf)

    async def close(self) -> None:
        """Cancel shadow work still running (at shutdown) and wait for it."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _zip(stable: list, shadow: list | None) -> list[tuple]:
    if shadow is None or len(shadow) != len(stable):
        got = "no predictions" if shadow is None else f"{len(shadow)} predictions"
        raise ValueError(f"the shadow classifier returned {got} for {len(stable)} texts")
    return list(zip(stable, shadow, strict=True))


def store_top1(kb) -> FaqTop1:
    """Top-1 FAQ of a dense search of the knowledge base's store (in threads), for the encoder's shadow."""

    async def top1(texts: Sequence[str], vectors: np.ndarray) -> list[tuple[str | None, float]]:
        store = kb.store
        if store is None or not kb.ready:
            raise ValueError("the knowledge base is not ready")
        results = await asyncio.gather(
            *(asyncio.to_thread(store.search, None, vec, 1, "dense") for vec in vectors)
        )
        out = []
        for hits in results:
            hit = hits[0] if hits else None
            score = (hit.cosine if hit.cosine is not None else hit.score) if hit else 0.0
            out.append((hit.faq_id if hit else None, float(score)))
        return out

    return top1


class CanaryRouting:
    """Everything canary in one gateway: watcher, router, canary pool, shadow runner; started by the lifespan."""

    def __init__(self, settings: GatewaySettings, metrics: GatewayMetrics, pool: WorkerPool, transport=None):
        assert settings.routing_file is not None
        self.settings, self.metrics, self.stable_pool = settings, metrics, pool
        self.watcher = RoutingWatcher(settings.routing_file, interval_s=settings.routing_poll_s)
        self.pool = canary_pool(settings, metrics, transport)
        self.router = CanaryRouter(self.watcher, pool, encoder_model=settings.faq_model)
        self.shadow: ShadowRunner | None = None
        self.models: ModelClient | None = None
        self._task: asyncio.Task | None = None

    def attach(self, models: ModelClient, kb=None) -> None:
        """Give the model client its shadow runner (the encoder's comparison searches `kb`'s store)."""
        self.models = models
        self.shadow = ShadowRunner(
            models,
            self.metrics,
            self.settings.shadow_timeout_s,
            self.settings.shadow_max_inflight,
            faq_top1=store_top1(kb) if kb is not None else None,
        )
        models.shadow = self.shadow

    async def start(self) -> None:
        await self.pool.start()
        self.watcher.start()
        await self.refresh()
        self._task = asyncio.get_running_loop().create_task(self._refresh_forever())

    async def refresh(self) -> None:
        """Canary pool metadata and probes, and the label order of every routed version (labels may differ)."""
        await self.pool.refresh()
        if self.models is None:
            return
        for role, model in self.stable_pool.models.items():
            route = self.router.table.config.models.get(model)
            if route is None:
                continue
            for version, pool in ((route.stable, self.stable_pool), (route.canary, self.pool)):
                if version is None or (model, version) in self.models.version_labels:
                    continue
                labels = await _version_labels(pool, role, version)
                if labels is not None:
                    self.models.version_labels[(model, version)] = labels

    async def _refresh_forever(self) -> None:
        every = min(self.settings.refresh_interval_s, max(1.0, self.settings.routing_poll_s))
        while True:
            await asyncio.sleep(every)
            try:
                await self.refresh()
            except Exception:  # noqa: BLE001 - the loop must survive anything
                log.exception("canary refresh failed")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.shadow is not None:
            await self.shadow.close()
        self.watcher.stop()
        await self.pool.close()


async def _version_labels(pool: WorkerPool, role: str, version: str) -> list[str] | None:
    """`parameters.labels` of one version from the first replica that answers (None: unknown or encoder)."""
    for replica in pool.replicas[role]:
        try:
            r = await pool.clients[role].get(
                f"{replica.url}/v2/models/{pool.models[role]}/versions/{version}"
            )
            if r.status_code != 200:
                continue
            labels = (r.json().get("parameters") or {}).get("labels")
            return [str(x) for x in labels] if isinstance(labels, list) else None
        except (httpx.HTTPError, ValueError):
            continue
    return None
