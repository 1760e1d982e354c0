"""PSI maths, each online gate pass / fail / inconclusive against a fake Prometheus, and the offline gate."""

from __future__ import annotations

import json
import math

import httpx
import numpy as np
import pytest

from services.canary import promql
from services.canary.analysis import Analyzer, Status
from services.canary.offline import OfflineGateError, offline_gate
from services.canary.policy import GatesConfig, LabelShiftGate, OfflineGate
from services.canary.prometheus import PrometheusClient, PrometheusError, window_seconds
from services.canary.stats import align, histogram_bins, psi, total_variation
from tests.test_canary_fakes import (
    LABELS,
    FakePrometheus,
    broken_scenario,
    confidence_counts,
    scenario,
    write_evaluation,
)

# ---- PSI and friends ---------------------------------------------------------------------------------------


def test_psi_by_hand():
    p, q = [50, 30, 20], [40, 40, 20]
    expected = (0.5 - 0.4) * math.log(0.5 / 0.4) + (0.3 - 0.4) * math.log(0.3 / 0.4) + 0
    assert psi(p, q) == pytest.approx(expected, rel=1e-6)
    assert psi(p, q) == pytest.approx(psi(q, p), rel=1e-9), "symmetric"
    assert psi([5, 3, 2], [50, 30, 20]) == pytest.approx(0.0, abs=1e-12), "scale free, zero when equal"


def test_psi_empty_bins_use_epsilon():
    # one-sided empty bin: finite, large; eps floors the share and renormalises
    value = psi([0, 100], [50, 50], eps=1e-4)
    p = np.array([1e-4, 1.0]) / 1.0001
    q = np.array([0.5, 0.5])
    assert value == pytest.approx(float(np.sum((p - q) * np.log(p / q))), rel=1e-9)
    assert math.isfinite(value) and value > 2
    # bins empty on both sides contribute nothing
    assert psi([10, 0, 10], [10, 0, 10]) == 0.0
    assert psi([10, 0, 20], [20, 0, 10]) == pytest.approx(psi([10, 20], [20, 10]))


def test_psi_errors():
    with pytest.raises(ValueError, match="no samples"):
        psi([0, 0], [1, 1])
    with pytest.raises(ValueError, match="bins"):
        psi([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="non-negative"):
        psi([1, -1], [1, 1])


def test_psi_noise_floor_matches_the_documented_approximation():
    """Two samples of one distribution: PSI ~ (k - 1) (1/n1 + 1/n2)."""
    rng = np.random.default_rng(0)
    k, n = 10, 2000
    values = [psi(np.bincount(rng.integers(0, k, n), minlength=k), np.bincount(rng.integers(0, k, n), minlength=k))
              for _ in range(200)]  # fmt: skip
    assert np.mean(values) == pytest.approx((k - 1) * (2 / n), rel=0.25)


def test_total_variation_align_and_histogram_bins():
    assert total_variation([1, 0], [0, 1]) == 1.0
    assert total_variation([30, 70], [50, 50]) == pytest.approx(0.2)
    keys, a, b = align({"x": 2, "y": 1}, {"y": 3, "z": 1})
    assert keys == ["x", "y", "z"] and a.tolist() == [2, 1, 0] and b.tolist() == [0, 3, 1]
    edges, counts = histogram_bins({0.5: 3.0, 1.0: 10.0, float("inf"): 9.9})
    assert edges == [0.5, 1.0, float("inf")] and counts.tolist() == [3.0, 7.0, 0.0]  # dip clipped to 0


# ---- online gates ------------------------------------------------------------------------------------------


def analyze(answers, gates: GatesConfig | None = None, window: str = "60s", **prom_kw):
    fake = FakePrometheus(answers, **prom_kw)
    with PrometheusClient("http://prometheus.test", transport=fake.transport) as prom:
        analysis = Analyzer(prom, gates or GatesConfig()).analyze("intent", "1", "2", window)
    return analysis, fake


def by_name(analysis):
    return {r.name: r for r in analysis.results}


def test_healthy_canary_passes_every_gate_with_the_promql_module_queries():
    analysis, fake = analyze(scenario())
    assert fake.unknown == [], "every query the gates sent came from promql.py / prometheus.py"
    assert analysis.verdict == Status.PASS, analysis.table()
    gates = by_name(analysis)
    assert set(gates) == {"error_rate", "latency_p99", "shadow_agreement", "confidence_shift", "label_shift"}
    assert gates["error_rate"].observed["canary"] == pytest.approx(0.012)
    assert gates["latency_p99"].observed["canary_ms"] == pytest.approx(55.0)
    assert gates["shadow_agreement"].observed == {"comparisons": 300, "agreement": 0.95}
    assert gates["label_shift"].observed["psi"] == pytest.approx(0.0, abs=1e-9)
    assert promql.shadow_agreement_rate("intent", "1", "2", "60s") in fake.asked
    table = analysis.table()
    assert "verdict: PASS" in table and "shadow_agreement" in table


def test_broken_canary_fails_agreement_and_label_shift_saying_by_how_much():
    analysis, _ = analyze(broken_scenario())
    assert analysis.verdict == Status.FAIL
    gates = by_name(analysis)
    agree = gates["shadow_agreement"]
    assert agree.status == Status.FAIL and not agree.passed
    assert "only 8.00% of 300 shadowed requests: 82.00 points below the required 90.00%" in agree.message
    labels = gates["label_shift"]
    assert labels.status == Status.FAIL and labels.observed["psi"] > 0.25
    assert "above the allowed 0.25" in labels.message and "退款 20.00% -> 45.00%" in labels.message
    assert gates["error_rate"].passed and gates["latency_p99"].passed, "fast and error-free, still wrong"
    assert [g.name for g in analysis.failed()] == ["shadow_agreement", "label_shift"]


def test_error_rate_gate_fail_and_margins():
    analysis, _ = analyze(scenario(err_stable=0.01, err_canary=0.05))
    g = by_name(analysis)["error_rate"]
    assert g.status == Status.FAIL
    # allowed = max(1% x 1.5, 1% + 1 point) = 2%; canary 5% -> 3 points over
    assert "canary error rate 5.00% vs stable 1.00%: 3.00 points over the allowed 2.00%" in g.message
    # a zero-error stable does not make one canary error fail: the absolute margin applies
    analysis, _ = analyze(scenario(err_stable=0.0, err_canary=0.005))
    assert by_name(analysis)["error_rate"].passed


def test_latency_gate_fail():
    analysis, _ = analyze(scenario(p99_stable=0.040, p99_canary=0.120))
    g = by_name(analysis)["latency_p99"]
    assert g.status == Status.FAIL
    assert "canary p99 120.0 ms vs stable 40.0 ms: 55.0 ms over the allowed 65.0 ms" in g.message


def test_confidence_shift_gate_fail():
    analysis, _ = analyze(scenario(conf_canary=confidence_counts(0.45, 600, seed=5)))
    g = by_name(analysis)["confidence_shift"]
    assert g.status == Status.FAIL and g.observed["psi"] > 1
    assert "confidence distribution shifted: PSI" in g.message and "mean confidence 0.4" in g.message


def test_label_shift_total_variation_measure():
    gates = GatesConfig(label_shift=LabelShiftGate(measure="tv", max=0.1))
    analysis, _ = analyze(broken_scenario(), gates)
    g = by_name(analysis)["label_shift"]
    # stable (.3 .2 .2 .2 .1) vs canary (.05 .1 .45 .1 .3): TV = 0.5 * (.25+.1+.25+.1+.2) = 0.45
    assert g.status == Status.FAIL and g.observed["tv"] == pytest.approx(0.45)


def test_too_few_samples_is_inconclusive_not_pass():
    analysis, _ = analyze(scenario(n_canary=40, n_shadow=12))
    gates = by_name(analysis)
    assert analysis.verdict == Status.INCONCLUSIVE
    for name in ("error_rate", "latency_p99", "shadow_agreement", "confidence_shift", "label_shift"):
        assert gates[name].status == Status.INCONCLUSIVE, name
        assert not gates[name].passed
    assert "not enough data: canary 40 requests (need 100 each)" in gates["error_rate"].message
    assert "shadow 12 comparisons (need 100 each)" in gates["shadow_agreement"].message


def test_no_traffic_at_all_is_inconclusive():
    analysis, fake = analyze({})
    assert analysis.verdict == Status.INCONCLUSIVE
    assert all(r.status == Status.INCONCLUSIVE for r in analysis.results)
    assert fake.unknown  # empty vectors everywhere


def test_no_shadow_traffic_is_inconclusive():
    analysis, _ = analyze(scenario(n_shadow=0))
    assert by_name(analysis)["shadow_agreement"].status == Status.INCONCLUSIVE


def test_prometheus_down_is_inconclusive_with_the_reason():
    analysis, _ = analyze(scenario(), fail_with=503)
    assert analysis.verdict == Status.INCONCLUSIVE
    assert "storage is down" in analysis.results[0].message


def test_disabled_gates_are_skipped_and_json_shape():
    gates = GatesConfig(latency_p99=None, confidence_shift=None, label_shift=None)
    analysis, fake = analyze(scenario(), gates)
    assert [r.name for r in analysis.results] == ["error_rate", "shadow_agreement"]
    assert not any("duration" in q or "confidence" in q for q in fake.asked)
    d = json.loads(json.dumps(analysis.to_dict()))
    assert d["verdict"] == "pass" and d["gates"][0]["passed"] is True
    assert set(d["gates"][0]) == {"name", "status", "passed", "observed", "threshold", "message"}


def test_prometheus_client_errors():
    def unreachable(request):
        raise httpx.ConnectError("connection refused")

    with PrometheusClient("http://p.test", transport=httpx.MockTransport(unreachable)) as prom:
        with pytest.raises(PrometheusError, match="unreachable"):
            prom.query("up")

    def matrix(request):
        return httpx.Response(200, json={"status": "success", "data": {"resultType": "matrix", "result": []}})

    with PrometheusClient("http://p.test", transport=httpx.MockTransport(matrix)) as prom:
        with pytest.raises(PrometheusError, match="expected an instant vector"):
            prom.query("up[5m]")
    with pytest.raises(ValueError, match="http"):
        PrometheusClient("prometheus:9090")
    assert window_seconds("1h30m") == 5400 and window_seconds("90s") == 90
    with pytest.raises(ValueError):
        window_seconds("5 minutes")


# ---- offline gate ------------------------------------------------------------------------------------------


def test_offline_gate_pass_and_fail(tmp_path):
    stable = write_evaluation(tmp_path, "intent", "1", accuracy=0.815, macro_f1=0.814)
    better = write_evaluation(tmp_path, "intent", "2", accuracy=0.83, macro_f1=0.805)
    worse = write_evaluation(tmp_path, "intent", "3", accuracy=0.70, macro_f1=0.69)
    ok = offline_gate(stable, better, OfflineGate(max_drop=0.02))
    assert ok.passed and ok.observed["canary_accuracy"] == 0.83
    bad = offline_gate(stable, worse, OfflineGate(max_drop=0.02))
    assert bad.status == Status.FAIL
    assert "accuracy dropped 0.1150, 0.0950 more than allowed" in bad.message
    assert "macro_f1 dropped 0.1240" in bad.message
    tight = offline_gate(stable, better, OfflineGate(max_drop=0.005, metrics=["macro_f1"]))
    assert tight.status == Status.FAIL and "macro_f1 dropped 0.0090" in tight.message


def test_offline_gate_refuses_different_sets(tmp_path):
    stable = write_evaluation(tmp_path, "intent", "1", accuracy=0.8, macro_f1=0.8)
    other = write_evaluation(
        tmp_path, "intent", "2", accuracy=0.9, macro_f1=0.9, data="/data/other.jsonl", n=150
    )
    with pytest.raises(OfflineGateError, match="not the same labelled set: data differs.*n differs"):
        offline_gate(stable, other, OfflineGate())
    # same path and size, but training.json recorded different contents for that file
    third = write_evaluation(tmp_path, "intent", "3", accuracy=0.9, macro_f1=0.9)
    for d, sha in ((stable, "a" * 64), (third, "b" * 64)):
        (d / "training.json").write_text(
            json.dumps({"dev": {"path": "/data/intent_cs_demo/dev.jsonl", "sha256": sha}})
        )
    with pytest.raises(OfflineGateError, match="different contents"):
        offline_gate(stable, third, OfflineGate())
    with pytest.raises(OfflineGateError, match="not found"):
        offline_gate(stable, tmp_path / "intent" / "9", OfflineGate())


def test_offline_gate_label_supports_must_match(tmp_path):
    stable = write_evaluation(tmp_path, "intent", "1", accuracy=0.8, macro_f1=0.8)
    supports = {label: {"support": 40 if label != LABELS[0] else 39} for label in LABELS}
    other = write_evaluation(tmp_path, "intent", "2", accuracy=0.8, macro_f1=0.8, per_label=supports)
    with pytest.raises(OfflineGateError, match="label supports differ"):
        offline_gate(stable, other, OfflineGate())
