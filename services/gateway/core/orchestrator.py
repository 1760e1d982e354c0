"""One customer turn: three model calls and a knowledge-base search, concurrently, then the policy's decision.

    result = await orchestrator.chat(SessionKey(tenant, session_id), text, timings)   # text normalised, masked
    version, preds, all_cached = await orchestrator.classify("intent", texts, timings, tenant=tenant)
    version, hits = await orchestrator.search_faq(texts, top_k, timings, tenant=tenant)

A turn runs intent, sentiment and (embed → store search) at the same time. Each of the three answers from the
response cache when it can: entries are per tenant, text and model, keyed by the caller's tenant, the
normalised text and the version of the model that computed them (`cache_key`), so a version change never reads
an answer of the old version and one tenant's traffic never shows in another's cache hits.
The knowledge-base search is not in this cache (only the query embedding); the FAQ store's own search cache
is keyed by the knowledge base's revision (`services/faq/milvus_search.py`), so an FAQ edited through the admin
API is served at once. When the turn's models share their workers they are asked in one request
(`_combined_turn`, `ModelClient.plan_combined`).

Degradation (each counted in `kefu_gateway_degraded_total{mode}` and listed in the answer's `degraded`):
- FAQ encoder down, store up               → BM25-only hits with their own thresholds (`faq_keywords_only`;
                                             `/v1/faq/search` answers them with model_version `keywords`);
- knowledge base down (store, or encoder and no keyword search) → intent and sentiment still decide: clarify or
                                             handoff (`faq_down`);
- intent model down                        → FAQ-only decision (`intent_down`);
- sentiment model down                     → no sentiment hand-over (`sentiment_down`);
- all of them down                         → 503 `upstreams_unavailable` with Retry-After.

The session (recent turns, unresolved count, slots) is the tenant's (`SessionKey(tenant, session_id)`): read
before and saved after the decision; a hand-over resets the unresolved count (the conversation has gone to a
human). Canary routing is sticky by tenant and session (`SessionKey.sticky_id`). Slots are extracted with the
shop's order-number format (`order_no_pattern`); resident ID and bank card numbers are never kept, only their
kinds reported (`ChatResult.pii_detected`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from services.common.logthrottle import LogThrottle
from services.faq.domain import FaqHit
from services.faq.query_text import search_text, without_ids
from services.gateway.clients.inference import ClassPrediction, ModelClient
from services.gateway.clients.upstream import UpstreamError
from services.gateway.core.errors import Unavailable
from services.gateway.core.knowledge import KEYWORDS_VERSION, FaqUnavailable, KnowledgeBase
from services.gateway.core.policy import Decision, Policy, Signals, Thresholds, decide
from services.gateway.core.slots import SlotExtractor
from services.gateway.core.timing import Timings
from services.gateway.metrics import GatewayMetrics
from services.gateway.settings import GatewaySettings
from services.gateway.state.cache import ResponseCache, cache_key
from services.gateway.state.sessions import Session, SessionKey, SessionStore

log = logging.getLogger(__name__)

DOWN_MODES = {"intent": "intent_down", "sentiment": "sentiment_down", "faq": "faq_down"}
KEYWORDS_ONLY = "faq_keywords_only"  # the encoder is down, the store answered by BM25 alone


@dataclass
class ChatResult:
    decision: Decision
    intent: ClassPrediction | None
    sentiment: ClassPrediction | None
    negative: float | None
    hits: list[FaqHit]
    versions: dict[str, str]
    degraded: list[str]
    session: Session
    cached: list[str] = field(default_factory=list)
    # kinds of personal numbers in the customer's text (resident_id, bank_card): never kept, only reported
    pii_detected: list[str] = field(default_factory=list)


class Orchestrator:
    def __init__(
        self,
        settings: GatewaySettings,
        policy: Policy,
        models: ModelClient,
        kb: KnowledgeBase | None,
        sessions: SessionStore,
        cache: ResponseCache | None,
        metrics: GatewayMetrics,
    ):
        self.settings, self.policy, self.models, self.kb = settings, policy, models, kb
        self.sessions, self.cache, self.metrics = sessions, cache, metrics
        self.slot_extractor = SlotExtractor(settings.order_no_pattern)
        self._degraded_log = LogThrottle(
            log, settings.log_repeat_interval_s
        )  # one line per part per interval

    # ── cache ───────────────────────────────────────────────────────────────────────────────────────

    async def _cached(self, role: str, text: str, version: str | None, tenant: str) -> dict | None:
        if self.cache is None or version is None:
            return None
        try:
            value = await self.cache.get(cache_key(role, text, {role: version}, tenant=tenant))
        except Exception as e:  # noqa: BLE001 - a cache outage costs latency, not answers
            self._degraded_log.warning("cache get", "cache get failed: %s", type(e).__name__)
            value = None
        self.metrics.cache.labels("hit" if value is not None else "miss").inc()
        return value

    async def _remember(self, role: str, text: str, version: str, value: dict, tenant: str) -> None:
        if self.cache is None or not version:
            return
        try:
            await self.cache.set(cache_key(role, text, {role: version}, tenant=tenant), value)
        except Exception as e:  # noqa: BLE001
            self._degraded_log.warning("cache set", "cache set failed: %s", type(e).__name__)

    # ── one model over a list of texts ──────────────────────────────────────────────────────────────

    async def classify(
        self, role: str, texts: list[str], timings: Timings, *, tenant: str, sticky_id: str | None = None
    ) -> tuple[str, list[ClassPrediction], bool]:
        """Predictions for every text (cached ones from `tenant`'s cache); returns (version, predictions, all
        cached). `sticky_id`: what canary routing sticks to (`SessionKey.sticky_id`). Raises `UpstreamError`."""
        version = self.models.versions().get(role)
        found = [await self._cached(role, t, version, tenant) for t in texts]
        missing = [i for i, v in enumerate(found) if v is None]
        out: list[ClassPrediction | None] = [
            None if v is None else ClassPrediction(v["label"], v["confidence"], v["probs"]) for v in found
        ]
        if missing:
            with timings.measure(role):
                answer = await self.models.predict(role, [texts[i] for i in missing], sticky_id)
            version = answer.version
            for i, pred in zip(missing, answer.predictions or [], strict=True):
                out[i] = pred
                await self._remember(role, texts[i], version, asdict(pred), tenant)
        return version or "unknown", [p for p in out if p is not None], not missing

    async def embed(
        self, texts: list[str], timings: Timings, *, tenant: str, sticky_id: str | None = None
    ) -> tuple[str, np.ndarray]:
        """Query vectors (cached per tenant, text and encoder version). Raises `UpstreamError` /
        `FaqUnavailable`."""
        if self.kb is None:
            raise FaqUnavailable("the knowledge base is disabled")
        version = self.kb.indexed_version if self.kb.ready else None
        found = [await self._cached("faq", t, version, tenant) for t in texts]
        missing = [i for i, v in enumerate(found) if v is None]
        vectors: list[Any] = [None if v is None else np.asarray(v["embedding"], np.float32) for v in found]
        if missing:
            version, fresh = await self.kb.embed([texts[i] for i in missing], sticky_id, timings)
            for i, vec in zip(missing, fresh, strict=True):
                vectors[i] = vec
                embedding = {"embedding": [float(x) for x in vec]}
                await self._remember("faq", texts[i], version, embedding, tenant)
        return str(version), np.stack(vectors)

    async def search_faq(
        self, texts: list[str], top_k: int, timings: Timings, *, tenant: str, sticky_id: str | None = None
    ) -> tuple[str, list[list[FaqHit]]]:
        """Raises `UpstreamError` / `FaqUnavailable`. With the encoder down (or answering another version than
        the collection's) and the store up: BM25 hits only, with the version `KEYWORDS_VERSION`."""
        try:
            version, vectors = await self.embed(texts, timings, tenant=tenant, sticky_id=sticky_id)
        except (UpstreamError, FaqUnavailable) as encoder_down:
            found = await self._keywords_or(encoder_down, texts, top_k, timings)
            if isinstance(found, BaseException):
                raise found from None
            return found
        return version, await self.kb.search_vectors(texts, vectors, top_k, timings, version)

    async def _keywords_or(
        self, encoder_down: Exception, texts: list[str], top_k: int, timings: Timings
    ) -> tuple[str, list[list[FaqHit]]] | Exception:
        """The encoder failed: BM25-only hits (`KEYWORDS_VERSION`, hits), or `encoder_down` when the store
        cannot search by keywords either."""
        if self.kb is None:
            return encoder_down
        try:
            return KEYWORDS_VERSION, await self.kb.search_keywords(texts, top_k, timings)
        except FaqUnavailable:
            return encoder_down

    # ── one request for the turn's models ───────────────────────────────────────────────────────────

    async def _combined_turn(
        self,
        text: str,
        top_k: int,
        timings: Timings,
        *,
        tenant: str,
        sticky_id: str | None,
        sentiment: bool = True,
    ) -> dict[str, Any] | None:
        """The turn's results as `chat` gathers them (each a value or its exception), the models asked in ONE
        request (`ModelClient.plan_combined`); None when they cannot be, and `chat` calls them one by one.
        `sentiment=False`: intent and FAQ only (the caller asks sentiment about another text).
        Cache reads and writes, versions and the knowledge base's checks are those of `classify` / `embed`."""
        faq = self.kb is not None and self.kb.ready
        roles = ["intent", "sentiment"] if sentiment else ["intent"]
        roles += ["faq"] if faq else []
        routes = self.models.plan_combined(roles, sticky_id)
        if routes is None:
            return None
        versions = self.models.versions()
        if faq:
            versions["faq"] = self.kb.indexed_version
        found = {role: await self._cached(role, text, versions.get(role), tenant) for role in roles}
        missing = {role: route for role, route in routes.items() if found[role] is None}
        answers: dict[str, Any] = {}
        if missing:
            with timings.measure("models"):
                answers = await self.models.predict_combined(missing, [text])
        results: dict[str, Any] = {}
        for role in (r for r in roles if r != "faq"):  # the classifiers asked
            if found[role] is not None:
                v = found[role]
                pred = ClassPrediction(v["label"], v["confidence"], v["probs"])
                results[role] = (versions.get(role) or "unknown", [pred], True)
            elif isinstance(answers[role], BaseException):
                results[role] = answers[role]
            else:
                answer = answers[role]
                for pred in answer.predictions or []:
                    await self._remember(role, text, answer.version, asdict(pred), tenant)
                results[role] = (answer.version or "unknown", list(answer.predictions or []), False)
        if self.kb is None:
            return results
        if not faq:  # as `search_faq` when `embed` finds the knowledge base unprepared
            unprepared = FaqUnavailable(self.kb.error or "not ready")
            results["faq"] = await self._keywords_or(unprepared, [text], top_k, timings)
            return results
        encoder_answered = False
        try:
            if found["faq"] is not None:
                version, vector = str(versions["faq"]), np.asarray(found["faq"]["embedding"], np.float32)
            elif isinstance(answers["faq"], BaseException):
                raise answers["faq"]
            else:
                version, vectors = self.kb.accept(answers["faq"])
                vector = vectors[0]
                await self._remember("faq", text, version, {"embedding": [float(x) for x in vector]}, tenant)
            encoder_answered = True
            hits = await self.kb.search_vectors([text], vector[None, :], top_k, timings, version)
            results["faq"] = (version, hits)
        except (UpstreamError, FaqUnavailable) as e:
            results["faq"] = e if encoder_answered else await self._keywords_or(e, [text], top_k, timings)
        return results

    # ── one chat turn ───────────────────────────────────────────────────────────────────────────────

    async def chat(self, key: SessionKey, text: str, timings: Timings) -> ChatResult:
        """One turn of the tenant's conversation `key` (the tenant from the authenticated caller)."""
        session = await self.sessions.get(key)
        top_k = self.settings.faq_top_k
        who = {"tenant": key.tenant, "sticky_id": key.sticky_id}
        # no model reads order / phone numbers (spelt digit by digit they crowd the question out:
        # `query_text.without_ids`); the intent model and the FAQ search read the question without its chat filler
        # (亲，/ 请问 / 呀~ / !! / emoji: `search_text`), the sentiment model the rest (the filler is tone)
        said, asked = without_ids(text), search_text(text)
        tone: Any = None  # sentiment's result when asked apart from the combined request
        if asked == said:
            results = await self._combined_turn(asked, top_k, timings, **who)
        else:
            combined, tone = await asyncio.gather(
                self._combined_turn(asked, top_k, timings, **who, sentiment=False),
                self.classify("sentiment", [said], timings, **who),
                return_exceptions=True,
            )
            if isinstance(combined, BaseException):
                raise combined
            results = None if combined is None else {**combined, "sentiment": tone}
        if results is None:  # one request per model
            calls = {"intent": self.classify("intent", [asked], timings, **who)}
            if tone is None:
                calls["sentiment"] = self.classify("sentiment", [said], timings, **who)
            if self.kb is not None:  # None: disabled by configuration, which is not a degradation
                calls["faq"] = self.search_faq([asked], top_k, timings, **who)
            gathered = await asyncio.gather(*calls.values(), return_exceptions=True)
            results = dict(zip(calls, gathered, strict=True)) | ({} if tone is None else {"sentiment": tone})
        results = {role: results[role] for role in ("intent", "sentiment", "faq") if role in results}
        answers: dict[str, Any] = {}
        degraded: list[str] = []
        for name, result in results.items():
            if isinstance(result, (UpstreamError, FaqUnavailable)):
                degraded.append(DOWN_MODES[name])
                self._degraded_log.warning(name, "chat turn degraded, %s: %s", name, result)
            elif isinstance(result, BaseException):
                raise result
            else:
                answers[name] = result
        if not answers:
            raise Unavailable(
                "upstreams_unavailable",
                "the models and the knowledge base are unavailable; retry later",
                retry_after_s=str(self.settings.retry_after_s),
            )
        intent = answers["intent"][1][0] if "intent" in answers else None
        sentiment = answers["sentiment"][1][0] if "sentiment" in answers else None
        hits = answers["faq"][1][0] if "faq" in answers else None
        negative = self.negative_score(sentiment)
        thresholds = (
            self.kb.thresholds
            if self.kb is not None
            else Thresholds(self.policy.faq.answer, self.policy.faq.suggest, "policy")
        )
        if "faq" in answers and answers["faq"][0] == KEYWORDS_VERSION:
            # the encoder is down: keyword hits, held to their own thresholds
            degraded.append(KEYWORDS_ONLY)
            thresholds = self.kb.keyword_thresholds
            del answers["faq"]  # no encoder version to report (`hits` holds the keyword hits)
        sentiment_version = answers["sentiment"][0] if "sentiment" in answers else None
        signals = Signals(intent, negative, hits, session.unresolved, text, sentiment_version)
        decision = decide(self.policy, thresholds, signals)
        pii = session.add_turn(
            intent.label if intent else None, decision.action, text, extractor=self.slot_extractor
        )
        if decision.action == "handoff":
            session.unresolved = 0
        await self.sessions.save(session)
        self.metrics.actions.labels(decision.action).inc()
        if decision.handoff_reason:
            self.metrics.handoffs.labels(decision.handoff_reason).inc()
        for mode in degraded:
            self.metrics.degraded.labels(mode).inc()
        versions = {name: answers[name][0] for name in answers}
        cached = [name for name in ("intent", "sentiment") if name in answers and answers[name][2]]
        return ChatResult(
            decision, intent, sentiment, negative, hits or [], versions, degraded, session, cached, list(pii)
        )

    def negative_score(self, sentiment: ClassPrediction | None) -> float | None:
        """P(negative), read by label name (`negative_label`) from the probabilities of the version that
        answered, so a 2-label (negative / positive) and a 3-label (negative / neutral / positive) version can
        serve side by side. When that version's label names are unknown (the table is keyed by index), only
        the worker's top label is named: P(negative) is its confidence when it is the negative label, else
        unknown (None: no sentiment hand-over on a guess; the old `1 − confidence` was wrong for 3 labels).
        """
        if sentiment is None:
            return None
        label = self.settings.negative_label
        if label in sentiment.probs:
            return float(sentiment.probs[label])
        return sentiment.confidence if sentiment.label == label else None
