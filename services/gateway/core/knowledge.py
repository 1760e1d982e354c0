"""The FAQ knowledge base as the gateway sees it: embed through the workers, search the store, apply thresholds.

    kb = KnowledgeBase(settings, policy, models, metrics, open_store=...)   # or store=InMemoryFaqStore(dim)
    await kb.prepare()                       # at start, and again on every refresh until ready
    version, hits = await kb.search(["运费怎么算"], top_k=5)

Preparation (in a thread, it may embed the whole knowledge base):
1. the encoder version and dimension come from the worker's metadata of the `faq` model (`faq-v<N>`);
2. the store is opened for that version (the process's `FaqSettings` with that version, `open_store()`: milvus-lite file by default);
3. an empty store is filled from `faq_seed_file` when one is set (the demo KB under `make run`);
4. a store whose collection was embedded by another encoder version is re-embedded through
   `services/faq/reindex.py` (zero-downtime alias switch) from its own contents, when `faq_reindex_on_mismatch`;
5. the answer / suggest thresholds are read from `<model repository>/<faq model>/thresholds.json` for that
   version (`services/faq/thresholds.py`), else taken from the policy file.

Until that succeeds, and whenever the encoder answers with a version other than the one the collection was
built with (a new encoder rolled out: it is re-indexed at the next refresh), `search` raises `FaqUnavailable`
and `/v1/chat` degrades (`faq_down`). Store calls run in threads with `store_timeout_s`, behind a circuit
breaker (`kefu_gateway_circuit_state{upstream="faq_store"}`). Metrics: `kefu_faq_search_duration_seconds`,
`kefu_faq_top_score`, `kefu_faq_entries`, `kefu_faq_store_up`, the encoder's `kefu_gateway_model_confidence`
(the top FAQ score) and `kefu_gateway_upstream_duration_seconds{upstream="faq_store"}`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from services.common.logthrottle import LogThrottle
from services.faq import thresholds as faq_thresholds
from services.faq.domain import FaqError, FaqHit, read_faq_jsonl
from services.faq.settings import FaqSettings
from services.faq.store import FaqStore, embed_entries
from services.gateway.clients.breaker import CircuitBreaker
from services.gateway.clients.embedder import WorkerEmbedder
from services.gateway.clients.inference import ModelAnswer, ModelClient
from services.gateway.core.policy import Policy, Thresholds, faq_score
from services.gateway.core.timing import Timings
from services.gateway.metrics import GatewayMetrics
from services.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

STORE = "faq_store"
KEYWORDS_MODE = "bm25"  # the search mode of the encoder-down fallback
KEYWORDS_VERSION = "keywords"  # what answers instead of an encoder version then
PROBE_TTL_S = 2.0  # how long readiness trusts the store's last live answer
StoreOpener = Callable[[str, int], FaqStore]  # (embedder version, dim) -> store
ReindexerFactory = Callable[[WorkerEmbedder], Callable[[list], Any]]


class FaqUnavailable(Exception):
    """The knowledge base cannot answer now (encoder or store down, not prepared, re-index pending)."""


def for_encoder(faq: FaqSettings, version: str, dim: int) -> FaqSettings:
    """The process's store settings (KEFU_FAQ_*) for the encoder version and dimension the workers serve."""
    return faq.model_copy(update={"embedder_version": version, "embedder_dim": dim})


def default_opener(faq: FaqSettings) -> StoreOpener:
    return lambda version, dim: for_encoder(faq, version, dim).open_store()


def default_reindexer(faq: FaqSettings) -> ReindexerFactory:
    from services.faq.admin import milvus_reindexer

    def factory(embedder: WorkerEmbedder):
        return milvus_reindexer(for_encoder(faq, embedder.version, embedder.dim), embedder)

    return factory


class KnowledgeBase:
    def __init__(
        self,
        settings: GatewaySettings,
        policy: Policy,
        models: ModelClient,
        metrics: GatewayMetrics,
        *,
        store: FaqStore | None = None,
        open_store: StoreOpener | None = None,
        reindexer: ReindexerFactory | None = None,
        probe_ttl_s: float = PROBE_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.settings, self.policy, self.models, self.metrics = settings, policy, models, metrics
        self.store = store
        self._owns_store = store is None  # an injected store belongs to the caller: never closed here
        self._open_store = open_store
        self._reindexer = reindexer
        self.embedder: WorkerEmbedder | None = None
        self.indexed_version: str | None = None  # encoder version number the collection holds
        self.thresholds = Thresholds(policy.faq.answer, policy.faq.suggest, "policy")
        self.error: str | None = "not prepared yet"
        gauge = metrics.circuit_state.labels(STORE)
        self.breaker = CircuitBreaker(
            settings.breaker_failures,
            settings.breaker_reset_s,
            on_change=lambda s: gauge.set(int(s)),
            max_reset_timeout_s=max(settings.breaker_reset_max_s, settings.breaker_reset_s),
        )
        self._lock = asyncio.Lock()
        self._clock, self.probe_ttl_s = clock, probe_ttl_s
        self.store_error: str | None = None  # the store's last live answer: None = it served
        self._probed_at = -math.inf
        self._probe_task: asyncio.Task | None = None
        self._failure_log = LogThrottle(log, settings.log_repeat_interval_s, clock)

    @property
    def ready(self) -> bool:
        """Prepared: the collection matches the encoder the workers serve (says nothing about the store now)."""
        return self.error is None

    @property
    def serving(self) -> bool:
        """Prepared, and the store answered its last live check (`probe`, or a search) — at most `probe_ttl_s`
        old when readiness asks often; an older answer starts a new probe in the background."""
        if not self.ready:
            return False
        if self._clock() - self._probed_at >= self.probe_ttl_s:
            self._probe_soon()
        return self.store_error is None

    def _probe_soon(self) -> None:
        if self._probe_task is not None and not self._probe_task.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._probe_task = loop.create_task(self.probe())

    async def probe(self) -> str | None:
        """One cheap live check of the store (`FaqStore.probe`, which also reloads a collection a restarted
        Milvus released); None when it can serve, else why not. Never raises."""
        store = self.store
        if store is None:
            problem: str | None = "no FAQ store open"
        else:
            try:
                problem = await asyncio.wait_for(
                    asyncio.to_thread(store.probe), self.settings.store_timeout_s
                )
            except TimeoutError:
                problem = f"the FAQ store did not answer within {self.settings.store_timeout_s:g} s"
            except Exception as e:  # noqa: BLE001 - a probe reports, it does not raise
                problem = getattr(e, "message", None) or f"{type(e).__name__}: {e}"
        self._store_state(problem)
        return problem

    def _store_state(self, problem: str | None) -> None:
        """Record what the store just did (a probe or a search): readiness and `kefu_faq_store_up` follow."""
        self._probed_at = self._clock()
        if problem is None and self.store_error is not None:
            log.info("FAQ store answers again (down since: %s)", self.store_error)
        elif problem is not None:
            self._failure_log.warning("store", "FAQ store unavailable: %s", problem)
        self.store_error = problem
        self.metrics.faq_store_up.set(0 if problem else 1)

    # ── preparation ─────────────────────────────────────────────────────────────────────────────────

    async def prepare(self) -> bool:
        """Bring the store in line with the encoder the workers serve; True when searches can run."""
        info = self.models.pool.info.get("faq")
        version = self.models.versions().get("faq")
        if info is None or version is None or not info.dim:
            self.error = "FAQ encoder metadata not known yet (worker unreachable?)"
            return False
        if self.ready and version == self.indexed_version:
            return True
        async with self._lock:
            pool = self.models.pool
            urls = [r.url for r in pool.replicas["faq"]]
            sync_transport = pool.transport if isinstance(pool.transport, httpx.BaseTransport) else None
            embedder = WorkerEmbedder(
                urls,
                pool.models["faq"],
                version,
                info.dim,
                pool.batch_size("faq"),
                self.settings.call_timeout_s * 5,
                transport=sync_transport,
            )
            try:
                await asyncio.to_thread(self._prepare, embedder)
            except Exception as e:  # noqa: BLE001 - reported, retried at the next refresh
                embedder.close()
                self.error = f"knowledge base not ready: {e}"
                log.error("%s", self.error)
                self.metrics.faq_store_up.set(0)
                return False
            if self.embedder is not None:
                self.embedder.close()
            self.embedder, self.indexed_version, self.error = embedder, version, None
            self.thresholds = self._thresholds(version)
            log.info(
                "knowledge base ready: encoder %s, thresholds answer %.3f / suggest %.3f (%s)",
                embedder.version, self.thresholds.answer, self.thresholds.suggest, self.thresholds.source,
            )  # fmt: skip
            return True

    def _prepare(self, embedder: WorkerEmbedder) -> None:
        if self.store is None:
            if self._open_store is None:
                raise FaqUnavailable("no FAQ store configured")
            self.store = self._open_store(embedder.version, embedder.dim)
        health = self.store.health()
        if not health.get("ok"):
            raise FaqUnavailable(f"store unhealthy: {health.get('error', 'unknown')}")
        stored = health.get("embedder_version")
        if self.store.count() == 0 and self.settings.faq_seed_file:
            entries = read_faq_jsonl(self.settings.faq_seed_file)
            if self._reindexer is not None and stored not in (None, embedder.version):
                self._reindexer(embedder)(entries)
            else:
                self.store.upsert(entries, embed_entries(embedder, entries, embedder.batch_size))
                if flush := getattr(self.store, "flush", None):  # Milvus: seal and index the new rows
                    flush()  # (searches of unsealed rows were 7x slower: 57 vs 8 ms on milvus-lite, serialised)
            log.info("knowledge base seeded with %d FAQs from %s", len(entries), self.settings.faq_seed_file)
        elif stored not in (None, embedder.version):
            if not (self.settings.faq_reindex_on_mismatch and self._reindexer is not None):
                raise FaqUnavailable(
                    f"collection embedded by {stored}, the workers serve {embedder.version}: re-index it"
                )
            log.warning(
                "collection embedded by %s, the workers serve %s: re-indexing", stored, embedder.version
            )
            report = self._reindexer(embedder)(read_all(self.store))
            log.info("re-index done: %s", report)
        health = self._update_health()
        if health.get("faqs"):  # warm-up: the first search loads the keyword analyser (~0.5 s on milvus-lite)
            try:
                self.store.search("你好", embedder.embed(["你好"])[0], 1, self.settings.faq_search_mode)
            except Exception as e:  # noqa: BLE001 - searches report their own failures
                log.warning("FAQ store warm-up search failed: %s", getattr(e, "message", None) or e)

    def _thresholds(self, version: str) -> Thresholds:
        repo = self.settings.model_repository
        if repo is not None and version.isdigit():
            try:
                calibrated = faq_thresholds.load(Path(repo) / self.models.pool.models["faq"], int(version))
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.warning("thresholds.json unreadable (%s): using the policy's thresholds", e)
                calibrated = None
            if calibrated is not None:
                confidence = calibrated.answer_confidence()  # None: an old, cosine-only calibration
                if confidence is not None and confidence.search_mode != self.settings.faq_search_mode:
                    log.warning(
                        "answer confidence fitted on %s search, the gateway runs %s: using the policy's "
                        "thresholds", confidence.search_mode, self.settings.faq_search_mode,
                    )  # fmt: skip
                    return Thresholds(self.policy.faq.answer, self.policy.faq.suggest, "policy")
                source = f"calibrated:{calibrated.encoder}"
                return Thresholds(calibrated.answer, calibrated.suggest, source, confidence)
        return Thresholds(self.policy.faq.answer, self.policy.faq.suggest, "policy")

    def _update_health(self) -> dict[str, Any]:
        health = self.store.health() if self.store is not None else {"ok": False}
        self.metrics.faq_store_up.set(1 if health.get("ok") else 0)
        if health.get("faqs") is not None:
            self.metrics.faq_entries.labels("faqs").set(health["faqs"])
        if health.get("rows") is not None:
            self.metrics.faq_entries.labels("phrasings").set(health["rows"])
        return health

    async def refresh(self) -> None:
        """Periodic: prepare again when not ready or the encoder version moved; otherwise a health check."""
        version = self.models.versions().get("faq")
        if not self.ready or version != self.indexed_version:
            await self.prepare()
            return
        if await self.probe() is not None:
            return
        try:
            await asyncio.wait_for(asyncio.to_thread(self._update_health), self.settings.store_timeout_s)
        except Exception as e:  # noqa: BLE001
            self._failure_log.warning("health", "FAQ store health check failed: %s", e)

    # ── search ──────────────────────────────────────────────────────────────────────────────────────

    async def embed(
        self, texts: list[str], session_id: str | None, timings: Timings
    ) -> tuple[str, np.ndarray]:
        """Query vectors from the encoder. Raises `UpstreamError` or `FaqUnavailable`."""
        if not self.ready:
            raise FaqUnavailable(self.error or "not ready")
        with timings.measure("faq_embed"):
            answer = await self.models.predict("faq", texts, session_id)
        return self.accept(answer)

    def accept(self, answer: ModelAnswer) -> tuple[str, np.ndarray]:
        """The encoder's answer, if it comes from the version the collection holds. Raises `FaqUnavailable`."""
        if answer.version != self.indexed_version:
            self.models.schedule_refresh()
            raise FaqUnavailable(
                f"the encoder answered with version {answer.version}, the collection holds {self.indexed_version}"
            )
        return answer.version, answer.embeddings

    async def search_vectors(
        self,
        texts: Sequence[str],
        vectors: np.ndarray | None,
        top_k: int,
        timings: Timings,
        version: str,
        mode: str | None = None,
    ) -> list[list[FaqHit]]:
        """One store search per text (concurrently); `vectors` None with `mode` "bm25": keywords only (the
        encoder is down). Raises `FaqUnavailable`."""
        if self.store is None:
            raise FaqUnavailable("no store")
        if not self.breaker.allow():
            self.metrics.upstream_duration.labels(STORE, "circuit_open").observe(0)
            raise FaqUnavailable("FAQ store circuit breaker is open")
        mode = mode or self.settings.faq_search_mode
        if vectors is None:
            vectors = [None] * len(texts)
        started = time.perf_counter()
        try:
            with timings.measure("faq_store"):
                results = await asyncio.wait_for(
                    asyncio.gather(
                        *(
                            asyncio.to_thread(self.store.search, text, vec, top_k, mode)
                            for text, vec in zip(texts, vectors, strict=True)
                        )
                    ),
                    self.settings.store_timeout_s,
                )
        except (TimeoutError, FaqError, OSError, RuntimeError) as e:
            outcome = "timeout" if isinstance(e, TimeoutError) else "error"
            self.breaker.record_failure()
            self.metrics.upstream_duration.labels(STORE, outcome).observe(time.perf_counter() - started)
            self._store_state(f"search failed: {getattr(e, 'message', None) or type(e).__name__}")
            raise FaqUnavailable(f"FAQ store search failed ({outcome})") from e
        elapsed = time.perf_counter() - started
        self.breaker.record_success()
        if self.store_error is not None or self._clock() - self._probed_at >= self.probe_ttl_s:
            self._store_state(None)
        self.metrics.upstream_duration.labels(STORE, "ok").observe(elapsed)
        model = self.models.pool.models["faq"]
        for hits in results:
            self.metrics.faq_search_duration.labels(mode).observe(elapsed / max(1, len(results)))
            if hits:
                self.metrics.faq_top_score.labels(mode).observe(hits[0].score)
                if version == KEYWORDS_VERSION:
                    continue  # the encoder did not answer: no confidence of it to record
                top = min(1.0, max(0.0, faq_score(hits[0])))
                self.metrics.model_confidence.labels(model, version, "stable").observe(top)
        return [list(h) for h in results]

    @property
    def keyword_thresholds(self) -> Thresholds:
        """Thresholds of keyword-only hits (`search_keywords`)."""
        return Thresholds.keywords(self.policy)

    async def search_keywords(self, texts: Sequence[str], top_k: int, timings: Timings) -> list[list[FaqHit]]:
        """BM25 only, no encoder: the fallback while the encoder is down (the store must be open and have
        served before). Raises `FaqUnavailable`."""
        if self.store is None or self.indexed_version is None:
            raise FaqUnavailable("the knowledge base was never prepared: no keyword search either")
        return await self.search_vectors(texts, None, top_k, timings, KEYWORDS_VERSION, KEYWORDS_MODE)

    async def search(
        self, texts: list[str], top_k: int, timings: Timings, session_id: str | None = None
    ) -> tuple[str, list[list[FaqHit]]]:
        version, vectors = await self.embed(texts, session_id, timings)
        return version, await self.search_vectors(texts, vectors, top_k, timings, version)

    def close(self) -> None:
        """Release the store this object opened and the encoder client; `prepare()` starts afresh."""
        if self.store is not None and self._owns_store:
            self.store.close()
            self.store = None
        if self.embedder is not None:
            self.embedder.close()
            self.embedder = None
        self.indexed_version, self.error = None, "not prepared yet"
        self.store_error, self._probed_at = None, -math.inf


def read_all(store: FaqStore, page: int = 1000) -> list:
    out: list = []
    while True:
        entries, total = store.list(len(out), page)
        out.extend(entries)
        if not entries or len(out) >= total:
            return out
