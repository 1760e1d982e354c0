"""services/canary/promql.py (shared by the canary dashboard, the canary alerts and the rollout gates): input
validation, and the numbers each expression gives on known series, evaluated by Prometheus's own engine
(`promtool test rules` with promql_expr_test)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from observe.promql_check import check_expressions
from services.canary import promql

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed (apt-get install prometheus)"
)

R = 'kefu_gateway_model_requests_total{model="intent", '
SERIES = {
    # intent v1 is stable: 10% errors. v2 is the candidate: as canary 5 of 20 calls/min fail, as shadow none.
    R + 'version="1", role="stable", outcome="ok"}': "0+90x10",
    R + 'version="1", role="stable", outcome="error"}': "0+10x10",
    R + 'version="2", role="canary", outcome="ok"}': "0+15x10",
    R + 'version="2", role="canary", outcome="timeout"}': "0+5x10",
    R + 'version="2", role="shadow", outcome="ok"}': "0+20x10",
    'kefu_gateway_model_requests_total{model="sentiment", version="1", role="stable", outcome="ok"}': "0+60x10",
    'kefu_gateway_shadow_comparisons_total{model="intent", stable_version="1", canary_version="2", agree="true"}': "0+18x10",
    'kefu_gateway_shadow_comparisons_total{model="intent", stable_version="1", canary_version="2", agree="false"}': "0+2x10",
    'kefu_gateway_model_predictions_total{model="intent", version="1", role="stable", label="退款"}': "0+30x10",
    'kefu_gateway_model_predictions_total{model="intent", version="1", role="stable", label="物流查询"}': "0+70x10",
    'kefu_gateway_model_confidence_bucket{model="intent", version="1", role="stable", le="0.5"}': "0+12x10",
    'kefu_gateway_model_confidence_bucket{model="intent", version="1", role="stable", le="1.0"}': "0+60x10",
    'kefu_gateway_model_confidence_bucket{model="intent", version="1", role="stable", le="+Inf"}': "0+60x10",
    # every v1 call between 50 and 100 ms: p99 = 0.05 + 0.99 * 0.05
    'kefu_gateway_model_duration_seconds_bucket{model="intent", version="1", role="stable", le="0.05"}': "0x10",
    'kefu_gateway_model_duration_seconds_bucket{model="intent", version="1", role="stable", le="0.1"}': "0+100x10",
    'kefu_gateway_model_duration_seconds_bucket{model="intent", version="1", role="stable", le="+Inf"}': "0+100x10",
}

CASES = [
    (promql.error_rate("intent", "1"), [("{}", 0.1)]),
    (promql.error_rate("intent", "2"), [("{}", 0.125)]),
    (promql.error_rate("intent", "2", role="canary"), [("{}", 0.25)]),
    (promql.error_rate("intent", "2", role="shadow"), [("{}", 0.0)]),
    (promql.error_rate("intent", "2", role=promql.CANDIDATE_ROLES), [("{}", 0.125)]),
    (promql.request_rate("intent", "2", "5m"), [("{}", 40 / 60)]),
    (promql.p99_latency("intent", "1"), [("{}", 0.0995)]),
    (promql.shadow_agreement_rate("intent", "1", "2"), [("{}", 0.9)]),
    (
        promql.label_distribution("intent", "1"),
        [('{label="退款"}', 0.3), ('{label="物流查询"}', 0.7)],
    ),
    (
        promql.confidence_histogram("intent", "1"),
        [('{le="0.5"}', 0.2), ('{le="1.0"}', 1.0), ('{le="+Inf"}', 1.0)],
    ),
    (
        promql.error_rate_by_model(None, by=("model", "role")),
        [('{model="intent", role="stable"}', 0.1), ('{model="intent", role="canary"}', 0.25)]
        + [('{model="intent", role="shadow"}', 0.0), ('{model="sentiment", role="stable"}', 0.0)],
    ),
    (promql.request_rate_by_model("stable"), [('{model="intent"}', 100 / 60), ('{model="sentiment"}', 1.0)]),
    (promql.p99_latency_by_model("stable"), [('{model="intent"}', 0.0995)]),
    (
        promql.shadow_agreement_by_model(),
        [('{model="intent", stable_version="1", canary_version="2"}', 0.9)],
    ),
]


@needs_promtool
def test_expressions_give_the_expected_numbers(tmp_path):
    test = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in SERIES.items()],
                "promql_expr_test": [
                    {
                        # promtool compares floats exactly: round to 4 decimals on both sides
                        "expr": f"round({expr}, 0.0001)",
                        "eval_time": "10m",
                        "exp_samples": [
                            {"labels": labels, "value": round(value, 4)} for labels, value in samples
                        ],
                    }
                    for expr, samples in CASES
                ],
            }
        ],
    }
    path = tmp_path / "promql-test.yaml"
    path.write_text(yaml.safe_dump(test, allow_unicode=True), "utf-8")
    proc = subprocess.run(["promtool", "test", "rules", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_promtool
def test_every_expression_parses_with_grafana_variables():
    exprs = {f"case {i}": e for i, (e, _) in enumerate(CASES)}
    exprs["dashboard"] = promql.error_rate("$model", "$canary", "5m", role="$role")
    exprs["delta"] = promql.shadow_confidence_delta("intent", "1", "2", 0.9, "1h")
    assert check_expressions(exprs) == []


def test_label_values_are_escaped():
    expr = promql.error_rate('in"tent\\', "1\n2")
    assert 'model="in\\"tent\\\\"' in expr and 'version="1\\n2"' in expr


@pytest.mark.parametrize("window", ["5", "5 m", "1h;drop", "", "-5m", "$model"])
def test_bad_windows_are_refused(window):
    with pytest.raises(ValueError, match="not a Prometheus duration"):
        promql.error_rate("intent", "1", window)


def test_windows_and_roles():
    assert promql.check_window("1h30m") == "1h30m" and promql.check_window("$__rate_interval")
    assert promql.role_matcher(None) == ""
    assert promql.role_matcher("stable") == 'role="stable"'
    assert promql.role_matcher(("canary", "shadow")) == 'role=~"canary|shadow"'
    with pytest.raises(ValueError, match="role must be one of stable, canary, shadow"):
        promql.role_matcher("primary")
    with pytest.raises(ValueError, match="quantile"):
        promql.latency_quantile("intent", "1", 1.5)
