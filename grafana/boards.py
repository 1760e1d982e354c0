"""The four kefu dashboards: gateway overview, workers, FAQ store, canary comparison.

Queries use only the metric names in `services/gateway/metrics.py` and `services/worker/metrics.py`, the
recording rules of `helm/files/rules/kefu-rules.yaml`, and (GPU panels) the DCGM exporter's names; the canary
dashboard takes every expression from `services/canary/promql.py`, the module the rollout gates use.
"""

from __future__ import annotations

from grafana.board_gateway import gateway
from grafana.builder import RI, Panel, Row, dashboard, label_variable, q, quantiles
from observe import rules
from services.canary import promql


def workers() -> dict:
    m = 'model=~"$model", version=~"$version"'
    mv = "{{model}} v{{version}}"
    items = [
        Row("Throughput and readiness"),
        Panel(
            "Requests/s by model and version",
            [q(f"sum by (model, version) (rate(kefu_worker_request_success_total{{{m}}}[{RI}]))", mv)],
            unit="reqps",
        ),
        Panel(
            "Failure ratio",
            [q(rules.worker_error_ratio(RI, m), mv)],
            unit="percentunit",
        ),
        Panel(
            "Ready replicas per version",
            [
                q(f"sum by (model, version) (kefu_worker_model_ready{{{m}}})", f"{mv} ready"),
                q(f"count by (model, version) (kefu_worker_model_ready{{{m}}})", f"{mv} serving it"),
            ],
            description="`kefu_worker_model_ready` is 1 when the version is loaded and warm on a worker.",
        ),
        Panel(
            "Request p99 (end to end in the worker)",
            quantiles("kefu_worker_request_duration_seconds", "model, version", m, qs=(0.99,)),
            unit="s",
        ),
        Row("Batching"),
        Panel(
            "Queue time per text",
            quantiles("kefu_worker_queue_duration_seconds", "model, version", m, qs=(0.5, 0.99)),
            unit="s",
            description="From enqueue to the start of the text's batch; the HPA scales worker pools on it.",
            thresholds=[(rules.QUEUE_P99_SECONDS, "red")],
        ),
        Panel(
            "Queue depth and in-flight requests",
            [
                q(f"sum by (model, version) (kefu_worker_queue_depth{{{m}}})", f"{mv} queued texts"),
                q(f"sum by (model, version) (kefu_worker_inflight_requests{{{m}}})", f"{mv} in flight"),
            ],
        ),
        Panel(
            "Mean batch size",
            [
                q(
                    f"sum by (model, version) (rate(kefu_worker_batch_size_sum{{{m}}}[{RI}])) / "
                    f"sum by (model, version) (rate(kefu_worker_batch_size_count{{{m}}}[{RI}]))",
                    mv,
                )
            ],
        ),
        Panel(
            "Batch size distribution",
            [q(f"sum by (le) (rate(kefu_worker_batch_size_bucket{{{m}}}[{RI}]))", "{{le}}", fmt="heatmap")],
            "heatmap",
        ),
        Panel(
            "Compute time per batch",
            quantiles("kefu_worker_compute_duration_seconds", "model, version", m, qs=(0.5, 0.99)),
            unit="s",
            w=24,
        ),
        Row("GPU (dcgm-exporter, GPU pools only)"),
        Panel(
            "GPU utilisation",
            [q("avg by (Hostname, gpu) (DCGM_FI_DEV_GPU_UTIL)", "{{Hostname}} gpu{{gpu}}")],
            unit="percent",
            description="From NVIDIA dcgm-exporter; empty where no GPU worker pool runs.",
            minimum=0,
            maximum=100,
        ),
        Panel(
            "GPU memory used",
            [q("max by (Hostname, gpu) (DCGM_FI_DEV_FB_USED)", "{{Hostname}} gpu{{gpu}}")],
            unit="mbytes",
            description="Framebuffer memory in MiB from NVIDIA dcgm-exporter; empty on CPU-only clusters.",
        ),
    ]
    return dashboard(
        "kefu-workers",
        "kefu / Workers",
        "Inference workers per model and version: traffic, readiness, queue time, batching, compute, GPU.",
        items,
        [
            label_variable("model", "kefu_worker_model_ready", "model"),
            label_variable("version", 'kefu_worker_model_ready{model=~"$model"}', "version"),
        ],
    )


def faq() -> dict:
    mode = 'mode=~"$mode"'
    items = [
        Panel(
            "FAQ store up",
            [q("min(kefu_faq_store_up)", "up")],
            "stat",
            description="1 when every gateway's last health check of the store succeeded.",
            w=6,
            h=4,
            thresholds=[(0, "red"), (1, "green")],
        ),
        Panel("FAQs", [q('max(kefu_faq_entries{kind="faqs"})', "faqs")], "stat", w=6, h=4),
        Panel("Phrasings", [q('max(kefu_faq_entries{kind="phrasings"})', "phrasings")], "stat", w=6, h=4),
        Panel(
            "Searches/s",
            [q(f"sum(rate(kefu_faq_search_duration_seconds_count{{{mode}}}[{RI}]))", "searches/s")],
            "stat",
            "reqps",
            w=6,
            h=4,
        ),
        Panel(
            "Search latency",
            quantiles("kefu_faq_search_duration_seconds", "mode", mode),
            unit="s",
        ),
        Panel(
            "Searches/s by mode",
            [q(f"sum by (mode) (rate(kefu_faq_search_duration_seconds_count{{{mode}}}[{RI}]))", "{{mode}}")],
            unit="reqps",
        ),
        Panel(
            "Top-hit score distribution",
            [q(f"sum by (le) (rate(kefu_faq_top_score_bucket{{{mode}}}[{RI}]))", "{{le}}", fmt="heatmap")],
            "heatmap",
            description="Normalised score (0..1) of the best hit of each search; answer/suggest thresholds cut it.",
        ),
        Panel(
            "Top-hit score median and p10",
            [
                q(
                    f"histogram_quantile(0.5, sum by (mode, le) (rate(kefu_faq_top_score_bucket{{{mode}}}[{RI}])))",
                    "median {{mode}}",
                ),
                q(
                    f"histogram_quantile(0.1, sum by (mode, le) (rate(kefu_faq_top_score_bucket{{{mode}}}[{RI}])))",
                    "p10 {{mode}}",
                ),
            ],
            minimum=0,
            maximum=1,
        ),
        Panel(
            "Index size",
            [q("max by (kind) (kefu_faq_entries)", "{{kind}}")],
            description="Knowledge-base size as the gateway's store health check reports it.",
        ),
        Panel(
            "Answers degraded because the store was down",
            [q(f'sum(rate(kefu_gateway_degraded_total{{mode="faq_down"}}[{RI}]))', "faq_down")],
            unit="reqps",
        ),
    ]
    return dashboard(
        "kefu-faq",
        "kefu / FAQ store",
        "Knowledge-base search on Milvus: latency, hit scores, index size, availability.",
        items,
        [label_variable("mode", "kefu_faq_search_duration_seconds_count", "mode")],
    )


def canary() -> dict:
    M, S, C = "$model", "$stable", "$canary"
    vs = "v$stable (stable)"
    vc = "v$canary (canary)"
    items = [
        Row("Health: stable vs canary"),
        Panel(
            "Error rate",
            [q(promql.error_rate(M, S, RI), vs), q(promql.error_rate(M, C, RI), vc)],
            unit="percentunit",
        ),
        Panel(
            "p99 model latency",
            [q(promql.p99_latency(M, S, RI), vs), q(promql.p99_latency(M, C, RI), vc)],
            unit="s",
        ),
        Panel(
            "Calls/s by version and role",
            [
                q(
                    f'sum by (version, role) (rate({promql.REQUESTS}{{model="$model"}}[{RI}]))',
                    "v{{version}} {{role}}",
                )
            ],
            unit="reqps",
            stack=True,
        ),
        Panel(
            "Shadow agreement with stable",
            [q(promql.shadow_agreement_rate(M, S, C, RI), "agreement")],
            unit="percentunit",
            minimum=0,
            maximum=1,
        ),
        Panel(
            "Shadow confidence delta (canary - stable)",
            [
                q(promql.shadow_confidence_delta(M, S, C, 0.1, RI), "p10"),
                q(promql.shadow_confidence_delta(M, S, C, 0.5, RI), "median"),
                q(promql.shadow_confidence_delta(M, S, C, 0.9, RI), "p90"),
            ],
            w=24,
        ),
        Row("Predictions: stable vs canary"),
        Panel(
            "Confidence distribution: stable",
            [q(promql.confidence_histogram(M, S, RI), "{{le}}", fmt="heatmap")],
            "heatmap",
        ),
        Panel(
            "Confidence distribution: canary",
            [q(promql.confidence_histogram(M, C, RI), "{{le}}", fmt="heatmap")],
            "heatmap",
        ),
        Panel(
            "Predicted labels over the range: stable",
            [q(promql.label_distribution(M, S, "$__range"), "{{label}}", instant=True)],
            "bargauge",
            "percentunit",
            minimum=0,
            maximum=1,
        ),
        Panel(
            "Predicted labels over the range: canary",
            [q(promql.label_distribution(M, C, "$__range"), "{{label}}", instant=True)],
            "bargauge",
            "percentunit",
            minimum=0,
            maximum=1,
        ),
    ]
    return dashboard(
        "kefu-canary",
        "kefu / Canary comparison",
        "A candidate version beside the stable one for one model: the numbers the rollout gates read "
        "(services/canary/promql.py).",
        items,
        [
            label_variable("model", promql.REQUESTS, "model", multi=False),
            label_variable(
                "stable", f'{promql.REQUESTS}{{model="$model", role="stable"}}', "version", multi=False
            ),
            label_variable(
                "canary",
                f'{promql.REQUESTS}{{model="$model", role=~"canary|shadow"}}',
                "version",
                multi=False,
            ),
        ],
    )


DASHBOARDS = {"gateway": gateway, "workers": workers, "faq-store": faq, "canary": canary}
