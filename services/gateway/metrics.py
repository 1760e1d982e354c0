"""Gateway and FAQ-store metrics (Prometheus). The names here are a contract: the Grafana dashboards, the alert
rules (`helm/` PrometheusRule, `grafana/`), the canary analysis (`services/canary`) and their checks read
`METRIC_NAMES`. Rename nothing without updating them.

No label ever carries user text: labels are routes (templates, not paths), status codes, upstream names, model
names/versions, actions, hand-over reasons, tenant ids and the models' own label sets.

| name | type | labels | meaning |
|---|---|---|---|
| kefu_gateway_requests_total | counter | route, status | HTTP requests answered (status = code) |
| kefu_gateway_request_duration_seconds | histogram | route, status | end to end, in the gateway |
| kefu_gateway_upstream_duration_seconds | histogram | upstream, outcome | one call to a worker model or the FAQ store (outcome ok/error/timeout/circuit_open) |
| kefu_gateway_upstream_retries_total | counter | upstream | calls retried on another replica |
| kefu_gateway_circuit_state | gauge | upstream | 0 closed, 1 half-open, 2 open |
| kefu_gateway_upstream_up | gauge | upstream | 1 when the last readiness probe of the upstream succeeded |
| kefu_gateway_actions_total | counter | action | /v1/chat decisions: answer, suggest, clarify, handoff |
| kefu_gateway_handoffs_total | counter | reason | hand-overs by reason (handoff rate = this / actions_total) |
| kefu_gateway_cache_requests_total | counter | result | response cache lookups: hit, miss |
| kefu_gateway_rate_limited_total | counter | tenant | requests refused with 429 by the per-key rate limit |
| kefu_gateway_shed_total | counter | route | requests refused with 503 `overloaded` by admission control |
| kefu_gateway_degraded_total | counter | mode | answers given while degraded: faq_down, intent_down, sentiment_down |
| kefu_gateway_model_requests_total | counter | model, version, role, outcome | model calls by served version; role stable/canary/shadow |
| kefu_gateway_model_duration_seconds | histogram | model, version, role | latency of those calls |
| kefu_gateway_model_predictions_total | counter | model, version, role, label | top label of classifier answers (the model's label set) |
| kefu_gateway_model_confidence | histogram | model, version, role | top-label probability (classifiers) or top FAQ score (encoder) |
| kefu_gateway_shadow_comparisons_total | counter | model, stable_version, canary_version, agree | shadow answer vs stable: agree "true"/"false" |
| kefu_gateway_shadow_confidence_delta | histogram | model, stable_version, canary_version | canary confidence minus stable |
| kefu_gateway_shadow_dropped_total | counter | model, reason | shadow calls not made (reason saturated: too many in flight) |
| kefu_faq_search_duration_seconds | histogram | mode | one knowledge-base search (hybrid/dense/bm25) |
| kefu_faq_top_score | histogram | mode | normalised score of the best hit of each search (0..1) |
| kefu_faq_entries | gauge | kind | knowledge-base size: kind faqs / phrasings |
| kefu_faq_store_up | gauge | | 1 when the last store health check succeeded |
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

GATEWAY = "kefu_gateway"
FAQ = "kefu_faq"

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
UPSTREAM_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# 20 equal-width bins: the canary analysis computes the PSI of confidence distributions from these.
SCORE_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))
DELTA_BUCKETS = (-0.5, -0.25, -0.1, -0.05, -0.01, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0)

METRIC_NAMES = [
    f"{GATEWAY}_requests_total",
    f"{GATEWAY}_request_duration_seconds",
    f"{GATEWAY}_upstream_duration_seconds",
    f"{GATEWAY}_upstream_retries_total",
    f"{GATEWAY}_circuit_state",
    f"{GATEWAY}_upstream_up",
    f"{GATEWAY}_actions_total",
    f"{GATEWAY}_handoffs_total",
    f"{GATEWAY}_cache_requests_total",
    f"{GATEWAY}_rate_limited_total",
    f"{GATEWAY}_shed_total",
    f"{GATEWAY}_degraded_total",
    f"{GATEWAY}_model_requests_total",
    f"{GATEWAY}_model_duration_seconds",
    f"{GATEWAY}_model_predictions_total",
    f"{GATEWAY}_model_confidence",
    f"{GATEWAY}_shadow_comparisons_total",
    f"{GATEWAY}_shadow_confidence_delta",
    f"{GATEWAY}_shadow_dropped_total",
    f"{FAQ}_search_duration_seconds",
    f"{FAQ}_top_score",
    f"{FAQ}_entries",
    f"{FAQ}_store_up",
]


class GatewayMetrics:
    """Every gateway metric, registered on `registry` (a fresh one per app keeps tests independent)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        kw = {"registry": registry} if registry is not None else {}
        self.requests = Counter(f"{GATEWAY}_requests", "HTTP requests answered", ("route", "status"), **kw)
        self.request_duration = Histogram(
            f"{GATEWAY}_request_duration_seconds",
            "End-to-end request duration in the gateway",
            ("route", "status"),
            buckets=LATENCY_BUCKETS,
            **kw,
        )
        self.upstream_duration = Histogram(
            f"{GATEWAY}_upstream_duration_seconds",
            "Duration of one upstream call",
            ("upstream", "outcome"),
            buckets=UPSTREAM_BUCKETS,
            **kw,
        )
        self.upstream_retries = Counter(
            f"{GATEWAY}_upstream_retries", "Upstream calls retried on another replica", ("upstream",), **kw
        )
        self.circuit_state = Gauge(
            f"{GATEWAY}_circuit_state", "Circuit breaker: 0 closed, 1 half-open, 2 open", ("upstream",), **kw
        )
        self.upstream_up = Gauge(
            f"{GATEWAY}_upstream_up",
            "1 when the upstream's last readiness probe succeeded",
            ("upstream",),
            **kw,
        )
        self.actions = Counter(f"{GATEWAY}_actions", "Chat decisions by action", ("action",), **kw)
        self.handoffs = Counter(f"{GATEWAY}_handoffs", "Hand-overs to a human by reason", ("reason",), **kw)
        self.cache = Counter(f"{GATEWAY}_cache_requests", "Response cache lookups", ("result",), **kw)
        self.rate_limited = Counter(
            f"{GATEWAY}_rate_limited", "Requests refused by the per-key rate limit", ("tenant",), **kw
        )
        self.shed = Counter(
            f"{GATEWAY}_shed", "Requests refused with 503 overloaded by admission control", ("route",), **kw
        )
        self.degraded = Counter(
            f"{GATEWAY}_degraded", "Answers given while an upstream is down", ("mode",), **kw
        )
        model_labels = ("model", "version", "role")
        self.model_requests = Counter(
            f"{GATEWAY}_model_requests", "Model calls by served version", (*model_labels, "outcome"), **kw
        )
        self.model_duration = Histogram(
            f"{GATEWAY}_model_duration_seconds",
            "Model call latency by served version",
            model_labels,
            buckets=UPSTREAM_BUCKETS,
            **kw,
        )
        self.model_predictions = Counter(
            f"{GATEWAY}_model_predictions", "Top label of classifier answers", (*model_labels, "label"), **kw
        )
        self.model_confidence = Histogram(
            f"{GATEWAY}_model_confidence",
            "Top-label probability (classifiers) or top FAQ score (encoder)",
            model_labels,
            buckets=SCORE_BUCKETS,
            **kw,
        )
        shadow_labels = ("model", "stable_version", "canary_version")
        self.shadow_comparisons = Counter(
            f"{GATEWAY}_shadow_comparisons",
            "Shadow answers compared with stable",
            (*shadow_labels, "agree"),
            **kw,
        )
        self.shadow_confidence_delta = Histogram(
            f"{GATEWAY}_shadow_confidence_delta",
            "Canary confidence minus stable confidence on shadowed requests",
            shadow_labels,
            buckets=DELTA_BUCKETS,
            **kw,
        )
        self.shadow_dropped = Counter(
            f"{GATEWAY}_shadow_dropped", "Shadow calls not made (saturated)", ("model", "reason"), **kw
        )
        self.faq_search_duration = Histogram(
            f"{FAQ}_search_duration_seconds",
            "One knowledge-base search",
            ("mode",),
            buckets=UPSTREAM_BUCKETS,
            **kw,
        )
        self.faq_top_score = Histogram(
            f"{FAQ}_top_score", "Normalised score of the best hit", ("mode",), buckets=SCORE_BUCKETS, **kw
        )
        self.faq_entries = Gauge(f"{FAQ}_entries", "Knowledge-base size", ("kind",), **kw)
        self.faq_store_up = Gauge(f"{FAQ}_store_up", "1 when the last store health check succeeded", **kw)
