"""The public customer-service API (v1): FastAPI app factory and thin routes.

    POST /v1/chat           one customer turn → reply, action (answer|suggest|clarify|handoff), intent, sentiment,
                            FAQ hits, handoff_reason, model versions, request id            (scope chat)
    POST /v1/intent         intent of one text or a list                                       (scope chat)
    POST /v1/sentiment      sentiment of one text or a list                                    (scope chat)
    POST /v1/faq/search     FAQs for one query or a list                                       (scope chat)
    GET  /healthz           liveness (the process answers)
    GET  /readyz            readiness: 200 when at least one upstream can answer (status ready / degraded),
                            503 when none can; the body is `{"status": ...}` only
    /admin/faq/...          the FAQ admin API (services/faq/admin.py)                           (scope admin)
    GET  /docs, /redoc, /openapi.json   only with docs_enabled (default: development mode only)

The internal app (`app.state.internal_app`, served on `internal_port` by the same process, sharing every
piece of state; never exposed publicly):

    GET  /metrics           Prometheus (services/gateway/metrics.py): tenant names, worker host:port
    GET  /healthz           liveness
    GET  /readyz            the same status and codes, with every upstream replica and the knowledge base

`create_app(settings, edge_settings, ...)` takes its dependencies so tests swap in fake workers (an httpx
transport), an in-memory FAQ store, and their own Prometheus registry. Authentication, rate limits, body and
text limits, normalisation, request ids, log redaction and the uniform error body are the edge's
(`edge/guard.py`); the decision is `core/orchestrator.py` + `core/policy.py`. Every response carries `X-Request-ID` and
`Server-Timing` (`timing.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.faq.admin import create_admin_router
from services.faq.admin_http import FaqAdminSettings
from services.faq.settings import FaqSettings
from services.faq.store import FaqStore
from services.gateway.api.faq_admin import KbEmbedder, KbStore, kb_bm25_refresher, kb_reindexer
from services.gateway.api.schemas import (
    ChatRequest,
    ChatResponse,
    ErrorResponse,
    FaqHitOut,
    FaqSearchRequest,
    FaqSearchResponse,
    FaqSearchResult,
    Health,
    IntentOut,
    IntentResponse,
    Readiness,
    ReadinessSummary,
    SentimentOut,
    SentimentResponse,
    TextsRequest,
)
from services.gateway.clients.inference import ModelClient, ModelRouter
from services.gateway.clients.upstream import UpstreamError, WorkerPool
from services.gateway.core.errors import GatewayError, InvalidInput, Unavailable
from services.gateway.core.knowledge import (
    FaqUnavailable,
    KnowledgeBase,
    ReindexerFactory,
    StoreOpener,
    default_opener,
    default_reindexer,
)
from services.gateway.core.orchestrator import Orchestrator
from services.gateway.core.policy import Policy
from services.gateway.core.timing import Timings
from services.gateway.edge.admission import Admission
from services.gateway.edge.guard import Edge, EdgeSettings
from services.gateway.metrics import GatewayMetrics
from services.gateway.settings import GatewaySettings
from services.gateway.state.cache import ResponseCache
from services.gateway.state.sessions import SessionKey, SessionStore

if TYPE_CHECKING:
    from services.gateway.config import Config

log = logging.getLogger("services.gateway")

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in {
        400: "invalid request (names the field / text index)",
        401: "missing or invalid credentials",
        403: "the key lacks the scope",
        413: "body too large",
        429: "rate limited (Retry-After)",
        503: "upstreams unavailable (Retry-After)",
    }.items()
}


class TimingMiddleware:
    """Request metrics by route template and status, and the `Server-Timing` header (outermost middleware)."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        timings = Timings()
        scope.setdefault("state", {})["timings"] = timings
        status = 500

        async def send_timed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["Server-Timing"] = timings.header()
            await send(message)

        try:
            await self.app(scope, receive, send_timed)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            elapsed = time.perf_counter() - timings.started
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.request_duration.labels(route, str(status)).observe(elapsed)


def _texts(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _upstream_error(e: UpstreamError, retry_after: int) -> GatewayError:
    if e.status == 400:
        return InvalidInput("invalid_text", f"the {e.upstream} model refused the input: {e.message}")
    return Unavailable(
        "upstream_unavailable",
        f"{e.upstream} is unavailable; retry later",
        retry_after_s=str(retry_after),
    )


def _tenant(request: Request) -> str:
    """The authenticated caller's tenant (set by `edge.require`): response-cache entries are per tenant."""
    return request.state.principal.tenant


def create_app(
    settings: GatewaySettings | None = None,
    edge_settings: EdgeSettings | None = None,
    *,
    registry: CollectorRegistry | None = None,
    transport: Any = None,
    store: FaqStore | None = None,
    open_store: StoreOpener | None = None,
    reindexer: ReindexerFactory | None = None,
    model_router: ModelRouter | None = None,
    sessions: SessionStore | None = None,
    cache: ResponseCache | None = None,
    faq_settings: FaqSettings | None = None,
    admin_settings: FaqAdminSettings | None = None,
) -> FastAPI:
    """Build the gateway from its settings (`config.Config`'s sections; a missing one is read from the
    environment). Without `store`/`open_store` the FAQ store is `faq_settings`' (KEFU_FAQ_*); `transport` (an
    httpx transport) replaces the network towards the workers in tests."""
    settings = settings or GatewaySettings()
    edge_settings = edge_settings or EdgeSettings()
    registry = registry if registry is not None else CollectorRegistry()
    metrics = GatewayMetrics(registry)
    policy = Policy.load(settings.policy_file)
    edge = Edge(edge_settings, metrics)
    sessions = sessions or edge.sessions
    if cache is None and settings.cache_enabled:
        cache = edge.cache
    pool = WorkerPool(settings, metrics, transport=transport)
    canary = None
    if settings.routing_file is not None:  # canary routing + shadow traffic (issue 7); reads the file now
        from services.gateway.clients.canary_routing import CanaryRouting

        canary = CanaryRouting(settings, metrics, pool, transport=transport)
    models = ModelClient(
        pool,
        metrics,
        model_router or (canary.router if canary else None),
        canary_pool=canary.pool if canary else None,
    )
    kb = None
    if settings.faq_enabled:
        if store is None and open_store is None:
            faq_settings = faq_settings or FaqSettings()
            open_store, reindexer = default_opener(faq_settings), reindexer or default_reindexer(faq_settings)
        kb = KnowledgeBase(
            settings, policy, models, metrics, store=store, open_store=open_store, reindexer=reindexer
        )
    if canary is not None:
        canary.attach(models, kb)
    orchestrator = Orchestrator(settings, policy, models, kb, sessions, cache, metrics)

    async def refresh_forever() -> None:
        while True:
            await asyncio.sleep(settings.refresh_interval_s)
            try:
                await pool.refresh()
                if kb is not None:
                    await kb.refresh()
            except Exception:  # noqa: BLE001 - the loop must survive anything
                log.exception("upstream refresh failed")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        admission.reset()
        await pool.start()
        await pool.refresh()
        if canary is not None:
            await canary.start()
        if kb is not None:
            await kb.prepare()
        task = asyncio.get_running_loop().create_task(refresh_forever())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if canary is not None:
                await canary.close()
            await pool.close()
            if kb is not None:
                await asyncio.to_thread(kb.close)
            await edge.close()  # its sessions, cache, rate limiter and Redis

    docs = settings.docs_enabled if settings.docs_enabled is not None else edge_settings.mode == "development"
    app = FastAPI(
        title="kefu gateway",
        version="1.0",
        description="客服 API: one decision per customer message (answer / suggest / clarify / handoff), intent, "
        "sentiment and FAQ search. Authenticate with `X-API-Key: <key>` or `Authorization: Bearer <key or JWT>`.",
        lifespan=lifespan,
        **({} if docs else {"docs_url": None, "redoc_url": None, "openapi_url": None}),
    )
    app.state.settings, app.state.pool, app.state.kb, app.state.orchestrator = (
        settings,
        pool,
        kb,
        orchestrator,
    )
    app.state.metrics, app.state.edge, app.state.registry = metrics, edge, registry
    app.state.canary = canary
    edge.install(app)
    app.add_middleware(TimingMiddleware, metrics=metrics)
    admission = Admission(
        settings.max_inflight,
        settings.admission_wait_s,
        1,
        metrics,
        max_queue=settings.admission_queue,
        max_loop_lag_s=settings.admission_max_loop_lag_s,
    )
    app.state.admission = admission
    app.add_middleware(admission.gate)  # outermost: overload refused before any other work
    # every /v1 route: the `chat` scope (and the per-key rate limit), then a slot from admission control
    v1 = APIRouter(
        prefix="/v1",
        tags=["v1"],
        responses=ERRORS,
        dependencies=[Depends(edge.require("chat")), Depends(admission)],
    )

    @v1.post("/chat", response_model=ChatResponse)
    async def chat(body: ChatRequest, request: Request):
        """One customer message in a session: the reply to show and what the support flow should do."""
        key = SessionKey(request.state.principal.tenant, body.session_id)  # sessions are per tenant
        text = edge.check_text(body.text, field="text")
        result = await orchestrator.chat(key, text, request.state.timings)
        d = result.decision
        log.info(
            "chat session=%s channel=%s action=%s reason=%s degraded=%s",
            body.session_id, body.channel or "-", d.action, d.handoff_reason or "-", ",".join(result.degraded) or "-",
        )  # fmt: skip
        return ChatResponse(
            request_id=request.state.request_id,
            session_id=body.session_id,
            reply=d.reply,
            action=d.action,
            intent=IntentOut(label=result.intent.label, confidence=result.intent.confidence)
            if result.intent
            else None,
            sentiment=_sentiment(result.sentiment, result.negative) if result.sentiment else None,
            faq_hits=[_hit(h) for h in d.hits],
            handoff_reason=d.handoff_reason,
            model_versions=result.versions,
            degraded=result.degraded,
            slots=dict(result.session.slots),
            pii_detected=result.pii_detected,
        )

    @v1.post("/intent", response_model=IntentResponse)
    async def intent(body: TextsRequest, request: Request):
        """Intent of each text (one or a list)."""
        texts = edge.check_texts(_texts(body.text), field="text")
        try:
            version, preds, _ = await orchestrator.classify(
                "intent", texts, request.state.timings, tenant=_tenant(request)
            )
        except UpstreamError as e:
            raise _upstream_error(e, settings.retry_after_s) from None
        results = [IntentOut(label=p.label, confidence=p.confidence) for p in preds]
        return IntentResponse(request_id=request.state.request_id, model_version=version, results=results)

    @v1.post("/sentiment", response_model=SentimentResponse)
    async def sentiment(body: TextsRequest, request: Request):
        """Sentiment of each text (one or a list)."""
        texts = edge.check_texts(_texts(body.text), field="text")
        try:
            version, preds, _ = await orchestrator.classify(
                "sentiment", texts, request.state.timings, tenant=_tenant(request)
            )
        except UpstreamError as e:
            raise _upstream_error(e, settings.retry_after_s) from None
        results = [_sentiment(p, orchestrator.negative_score(p)) for p in preds]
        return SentimentResponse(request_id=request.state.request_id, model_version=version, results=results)

    @v1.post("/faq/search", response_model=FaqSearchResponse)
    async def faq_search(body: FaqSearchRequest, request: Request):
        """The best FAQs for each query (one or a list), best first."""
        texts = edge.check_texts(_texts(body.text), field="text")
        try:
            version, hits = await orchestrator.search_faq(
                texts, body.top_k, request.state.timings, tenant=_tenant(request)
            )
        except UpstreamError as e:
            raise _upstream_error(e, settings.retry_after_s) from None
        except FaqUnavailable as e:
            raise Unavailable(
                "faq_unavailable",
                f"the knowledge base is unavailable: {e}",
                retry_after_s=str(settings.retry_after_s),
            ) from None
        results = [FaqSearchResult(hits=[_hit(h) for h in per_text]) for per_text in hits]
        return FaqSearchResponse(request_id=request.state.request_id, model_version=version, results=results)

    app.include_router(v1)

    def readiness() -> Readiness:
        usable = {role: pool.usable(role) for role in pool.replicas}
        kb_ready = kb is not None and kb.serving  # prepared, and the store answered a live check just now
        can = [usable["intent"], usable["sentiment"]] + (
            [usable["faq"] and kb_ready] if kb is not None else []
        )
        status = "ready" if all(can) else "degraded" if any(can) else "unavailable"
        return Readiness(
            status=status,
            upstreams=pool.status(),
            knowledge_base={
                "enabled": kb is not None,
                "ready": kb_ready,
                "encoder": kb.embedder.version if kb and kb.embedder else None,
                "thresholds": kb.thresholds.describe() if kb else None,
                "error": (kb.error or kb.store_error) if kb else None,
            },
        )

    @app.get("/healthz", response_model=Health, tags=["ops"])
    async def healthz():
        return Health(status="ok")

    @app.get(
        "/readyz", response_model=ReadinessSummary, tags=["ops"], responses={503: {"model": ReadinessSummary}}
    )
    async def readyz():
        """Ready (every upstream usable), degraded (some) or unavailable (503); details on the internal port."""
        status = readiness().status
        return JSONResponse({"status": status}, status_code=503 if status == "unavailable" else 200)

    internal = FastAPI(title="kefu gateway (internal)", docs_url=None, redoc_url=None, openapi_url=None)
    internal.state.public_app = app
    edge.install(internal)  # request ids, body limit, uniform errors
    app.state.internal_app = internal

    @internal.get("/healthz", response_model=Health)
    async def internal_healthz():
        return Health(status="ok")

    @internal.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
    async def internal_readyz():
        body = readiness()
        return JSONResponse(body.model_dump(), status_code=503 if body.status == "unavailable" else 200)

    @internal.get("/metrics", response_class=Response)
    async def prometheus_metrics():
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    if kb is not None:
        admin = create_admin_router(
            KbStore(kb),
            KbEmbedder(kb),
            auth=edge.admin_dependency(),
            settings=admin_settings,
            reindexer=kb_reindexer(kb),
            bm25_refresher=kb_bm25_refresher(kb),
        )
        app.include_router(admin, prefix="/admin/faq", tags=["admin"])
    return app


def _sentiment(p, negative: float | None) -> SentimentOut:
    return SentimentOut(
        label=p.label, score=p.confidence, negative=round(negative if negative is not None else 0.0, 6)
    )


def _hit(h) -> FaqHitOut:
    score = h.cosine if h.cosine is not None else h.score
    return FaqHitOut(
        faq_id=h.faq_id,
        question=h.question,
        answer=h.answer,
        category=h.category,
        matched_text=h.matched_text,
        score=round(float(score), 6),
    )


def create_app_from_config(config: Config) -> FastAPI:
    """The app of `python -m services.gateway`: logging set up, then every section of `config` passed in."""
    logging.basicConfig(
        level=config.gateway.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    import jieba  # sets its own logger to DEBUG on import: import it first, then quieten it

    for noisy in ("httpx", "jieba", "faiss.loader"):  # a line per probe; dictionary and library loading
        logging.getLogger(noisy).setLevel(logging.WARNING)
    jieba.setLogLevel(logging.WARNING)
    return create_app(config.gateway, config.edge, faq_settings=config.faq, admin_settings=config.faq_admin)


def create_app_from_env() -> FastAPI:
    """uvicorn factory (`uvicorn --factory services.gateway.api.app:create_app_from_env`)."""
    from services.gateway.config import Config

    return create_app_from_config(Config.from_env())
