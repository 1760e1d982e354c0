"""Gateway core settings: one object, every field documented, each overridable by a KEFU_GATEWAY_* variable.

The edge (security, limits, normalisation, sessions, cache and Redis: `services/gateway/edge/guard.py`) reads its own
`EdgeSettings` from the same prefix; both ignore each other's variables (`extra="ignore"`). The FAQ store is configured by `KEFU_FAQ_*`
(`services.faq.settings.FaqSettings`), except the encoder version and dimension, which the gateway takes from the
worker serving the `faq` model.

Complex values are JSON, e.g.
    KEFU_GATEWAY_WORKERS='{"intent": ["http://10.0.0.5:8001", "http://10.0.0.6:8001"],
                           "sentiment": ["http://10.0.0.5:8001"], "faq": ["http://10.0.0.7:8001"]}'
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.gateway.core.slots import DEFAULT_ORDER_NO_PATTERN

DEFAULTS = Path(__file__).resolve().parent / "defaults"
LOCAL_WORKER = "http://127.0.0.1:8001"


def _default_workers() -> dict[str, list[str]]:
    return {"intent": [LOCAL_WORKER], "sentiment": [LOCAL_WORKER], "faq": [LOCAL_WORKER]}


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KEFU_GATEWAY_", extra="ignore")

    host: str = Field("127.0.0.1", description="bind address of `python -m services.gateway`")
    port: int = Field(8000, ge=1, le=65535, description="bind port")
    log_level: str = Field("info", description="log level of the gateway (and uvicorn)")
    internal_port: int = Field(
        9000,
        ge=1,
        le=65535,
        description="internal port (same process): GET /metrics, /healthz and the detailed /readyz, for "
        "Prometheus and probes; never exposed publicly (the chart's NetworkPolicy admits only the monitoring "
        "namespace)",
    )
    internal_host: str | None = Field(None, description="bind address of the internal port; unset = `host`")
    docs_enabled: bool | None = Field(
        None,
        description="/docs and /openapi.json on the public port; unset = on in development, off in production "
        "(KEFU_GATEWAY_MODE)",
    )
    max_header_bytes: int = Field(
        32 * 1024,
        ge=1024,
        description="largest request line + headers on either port; 431 above, before more is read",
    )

    # ── upstream workers ──────────────────────────────────────────────────────────────────────────────
    workers: dict[str, list[str]] = Field(
        default_factory=_default_workers,
        description="worker base URLs per model (JSON); several replicas per model spread load and take "
        "retries; the keys are the gateway's roles intent / sentiment / faq",
    )
    intent_model: str = Field("intent", description="name of the intent classifier on its workers")
    sentiment_model: str = Field("sentiment", description="name of the sentiment classifier on its workers")
    faq_model: str = Field("faq", description="name of the FAQ sentence encoder on its workers")
    combined_model_calls: bool = Field(
        True,
        description="a chat turn sends ONE request (POST /v2/multi/infer) for its models when they live at "
        "the same worker URLs and those workers offer it; false: one request per model",
    )
    negative_label: str = Field("negative", description="the sentiment model's label for negative")
    connect_timeout_s: float = Field(0.5, gt=0, description="TCP connect timeout towards a worker")
    call_timeout_s: float = Field(2.0, gt=0, description="timeout of one inference call (one replica)")
    retries: int = Field(
        1, ge=0, description="extra attempts of an inference call, each on another replica (not after a 4xx)"
    )
    max_connections: int = Field(
        100, ge=1, description="pooled HTTP connections per role (intent, sentiment, faq) towards its workers"
    )
    hedge_after_s: float = Field(
        0.5,
        ge=0,
        description="a worker call with no answer after this long is also sent to the next replica (a hedge, "
        "clients/hedging.py); the first answer wins, so a hung replica costs this, not call_timeout_s "
        "(0 = off)",
    )
    hedge_budget_ratio: float = Field(
        0.1,
        gt=0,
        le=1,
        description="hedges are at most this share of the worker calls over time (a token bucket), so a slow "
        "upstream under overload is not sent twice the load",
    )
    breaker_failures: int = Field(
        5,
        ge=1,
        description="consecutive failures (connect error, timeout, 5xx) that open a replica's breaker",
    )
    breaker_reset_s: float = Field(
        0.5,
        gt=0,
        description="seconds a newly opened breaker refuses calls before one half-open trial; each failed trial "
        "doubles the wait, up to breaker_reset_max_s",
    )
    breaker_reset_max_s: float = Field(
        2.0,
        gt=0,
        description="longest wait between half-open trials: a replica that comes back is used again within this",
    )
    log_repeat_interval_s: float = Field(
        30.0,
        gt=0,
        description="a failure that repeats (an upstream down, a degraded chat turn) is logged once per this "
        "interval per upstream, with a count of the repeats held back",
    )
    refresh_interval_s: float = Field(
        5.0,
        gt=0,
        description="readiness probes of every upstream and refresh of the models' metadata (versions, "
        "batch limits, labels) this often; a version change takes effect at the next refresh",
    )
    default_batch_size: int = Field(
        32, ge=1, description="texts per inference call while a model's max_batch_size is not known yet"
    )

    # ── decision policy and FAQ ───────────────────────────────────────────────────────────────────────
    policy_file: Path = Field(
        DEFAULTS / "policy.yaml",
        description="decision policy: thresholds, hand-over intents and reasons, reply templates",
    )
    model_repository: Path | None = Field(
        Path("model_repository"),
        description="model repository the workers serve, read only for <repo>/<faq model>/thresholds.json "
        "(answer/suggest thresholds per encoder version); missing = the policy file's thresholds",
    )
    faq_enabled: bool = Field(True, description="search the FAQ knowledge base (false = no store at all)")
    faq_top_k: int = Field(5, ge=1, le=20, description="FAQs fetched per /v1/chat search")
    faq_search_mode: Literal["hybrid", "dense", "bm25"] = Field(
        "hybrid", description="knowledge-base search mode of /v1/chat"
    )
    faq_seed_file: Path | None = Field(
        None,
        description="JSONL knowledge base (faq.jsonl format) loaded when the store is empty; `make run` "
        "points it at data/faq_kb_demo/faq.jsonl",
    )
    faq_reindex_on_mismatch: bool = Field(
        True,
        description="when the collection was embedded by another encoder version than the worker serves, "
        "re-embed it (zero-downtime re-index) at start; false = FAQ search stays off until someone does",
    )
    store_timeout_s: float = Field(2.0, gt=0, description="timeout of one knowledge-base search")

    # ── state (sessions, cache sizes, Redis: EdgeSettings in edge/guard.py) ─────────────────────────────────
    cache_enabled: bool = Field(
        True,
        description="cache model answers per normalised text and model version (the edge's cache: "
        "KEFU_GATEWAY_CACHE_MAX_ENTRIES / _CACHE_TTL_S, Redis when KEFU_GATEWAY_REDIS_URL is set)",
    )
    order_no_pattern: str = Field(
        DEFAULT_ORDER_NO_PATTERN,
        description="the shop's order-number format (a regular expression matched against a whole token) "
        "for the `order_no` slot; ID and bank card numbers are refused whatever it says (slots.py)",
    )

    # ── canary routing and shadow traffic (issue 7, services/gateway/clients/canary_routing.py) ────────────────
    routing_file: Path | None = Field(
        None,
        description="routing file (services/canary/routing.py: stable / canary / weight / shadow / sticky per "
        "model), hot-reloaded; in the cluster the mounted routing ConfigMap. Empty: no canary, every call "
        "goes to the latest version the workers serve",
    )
    routing_poll_s: float = Field(1.0, gt=0, description="how often the routing file is checked for changes")
    canary_workers: dict[str, list[str]] = Field(
        default_factory=dict,
        description="worker base URLs per role (JSON, like `workers`) for canary and shadow versions, e.g. the "
        "canary Services in the cluster; a role without an entry calls its candidate on the stable workers",
    )
    shadow_timeout_s: float = Field(
        2.0, gt=0, description="deadline of one shadow call and its comparison (never delays the client)"
    )
    shadow_max_inflight: int = Field(
        32,
        ge=1,
        description="shadow calls running at once; more are dropped (kefu_gateway_shadow_dropped_total)",
    )

    # ── degradation ───────────────────────────────────────────────────────────────────────────────────
    retry_after_s: int = Field(5, ge=1, description="Retry-After of a 503 when every upstream is down")
    max_inflight: int = Field(
        10,
        ge=0,
        description="admission control: /v1 requests inside this process at once; more wait for a slot up to "
        "`admission_wait_s`, then get 503 overloaded (0 = no limit). The defaults (10, no queue, 20 ms) were "
        "measured on the 2-core local stack (docs/reliability.md, Overload); size them per pod from the same "
        "benchmark",
    )
    admission_wait_s: float = Field(
        0.02,
        ge=0,
        description="queue-time cap: longest a /v1 request waits, from its arrival, for a slot before 503 "
        "overloaded (Retry-After: 1)",
    )
    admission_queue: int = Field(
        0,
        ge=0,
        description="/v1 requests that may wait for a slot; past max_inflight + this, 503 overloaded at once, "
        "before authentication or reading the body",
    )
    admission_max_loop_lag_s: float = Field(
        0.05,
        ge=0,
        description="with every slot taken: event-loop lag (the process is out of CPU) past which new /v1 "
        "requests get 503 overloaded at once instead of queueing (0 = off)",
    )
    server_limit_concurrency: int = Field(
        2048,
        ge=1,
        description="open connections + requests the HTTP server takes (uvicorn limit_concurrency); past it, a "
        "plain 503 from the server itself",
    )
    backlog: int = Field(
        2048, ge=1, description="listen backlog of the public port (connections not yet accepted)"
    )
    keep_alive_s: float = Field(5, gt=0, description="an idle keep-alive connection is closed after this")

    @field_validator("routing_file", mode="before")
    @classmethod
    def _routing_file(cls, v: object) -> object:
        return None if v == "" else v

    @field_validator("canary_workers")
    @classmethod
    def _canary_workers(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        return _worker_urls("canary_workers", v, every_role=False)

    @field_validator("workers")
    @classmethod
    def _workers(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        return _worker_urls("workers", v, every_role=True)


ROLES = ("intent", "sentiment", "faq")


def _worker_urls(name: str, v: dict[str, list[str]], *, every_role: bool) -> dict[str, list[str]]:
    """Worker base URLs per model role, without a trailing slash: http(s) only, known roles only; with
    `every_role`, at least one replica for each role (roles with no URL are dropped otherwise)."""
    for role in v:
        if role not in ROLES:
            raise ValueError(f"{name}: unknown role {role!r} (intent, sentiment, faq)")
    for role in ROLES if every_role else ():
        if not v.get(role):
            raise ValueError(f"{name}: no URL for {role!r} (give at least one replica per model)")
    for role, urls in v.items():
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{name}[{role!r}]: {url!r} is not an http(s) URL")
    return {role: [u.rstrip("/") for u in urls] for role, urls in v.items() if urls}
