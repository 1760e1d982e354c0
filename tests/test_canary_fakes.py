"""Shared fakes for the canary tests (no tests here): an in-process Prometheus answering canned vectors for the
exact PromQL the gates send (built with services/canary/promql.py), and evaluation reports."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np

from services.canary import promql
from services.canary.prometheus import label_rate, shadow_comparison_rate, window_seconds
from services.gateway.metrics import SCORE_BUCKETS

LABELS = ["物流查询", "退换货", "退款", "商品咨询", "其他/闲聊"]


class FakePrometheus:
    """`/api/v1/query` over a {query: result} map; unknown queries answer an empty vector and are recorded."""

    def __init__(self, answers: dict[str, list[dict]] | None = None, fail_with: int | None = None):
        self.answers = dict(answers or {})
        self.fail_with = fail_with
        self.asked: list[str] = []
        self.unknown: list[str] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v1/query", request.url
        q = request.url.params["query"]
        self.asked.append(q)
        if self.fail_with is not None:
            return httpx.Response(
                self.fail_with, json={"status": "error", "errorType": "internal", "error": "storage is down"}
            )
        if q not in self.answers:
            self.unknown.append(q)
        result = self.answers.get(q, [])
        return httpx.Response(
            200, json={"status": "success", "data": {"resultType": "vector", "result": result}}
        )

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handler)


def _one(value: float) -> list[dict]:
    return [{"metric": {}, "value": [1700000000.0, repr(float(value))]}]


def _by(label: str, values: dict[str, float]) -> list[dict]:
    return [{"metric": {label: k}, "value": [1700000000.0, repr(float(v))]} for k, v in values.items()]


def confidence_counts(mean: float, n: int, spread: float = 0.08, seed: int = 0) -> list[float]:
    """Counts of `n` confidences ~ N(mean, spread) clipped to (0, 1], in the gateway's 20 bins."""
    x = np.clip(np.random.default_rng(seed).normal(mean, spread, n), 1e-6, 1.0)
    edges = [0.0, *SCORE_BUCKETS]
    return np.histogram(x, bins=edges)[0].astype(float).tolist()


def scenario(
    model: str = "intent",
    stable: str = "1",
    canary: str = "2",
    window: str = "60s",
    *,
    n_stable: int = 1000,
    n_canary: int = 600,
    err_stable: float = 0.01,
    err_canary: float = 0.012,
    p99_stable: float = 0.050,
    p99_canary: float = 0.055,
    n_shadow: int = 300,
    agreement: float = 0.95,
    conf_stable: list[float] | None = None,
    conf_canary: list[float] | None = None,
    labels_stable: dict[str, float] | None = None,
    labels_canary: dict[str, float] | None = None,
) -> dict[str, list[dict]]:
    """Canned answers for every query of one analysis (counts given; Prometheus answers rates = count / window)."""
    secs = window_seconds(window)
    conf_stable = conf_stable if conf_stable is not None else confidence_counts(0.8, n_stable, seed=1)
    conf_canary = conf_canary if conf_canary is not None else confidence_counts(0.8, n_canary, seed=2)
    base = dict(zip(LABELS, (0.3, 0.2, 0.2, 0.2, 0.1), strict=True))
    labels_stable = labels_stable or {k: v * n_stable for k, v in base.items()}
    labels_canary = labels_canary or {k: v * n_canary for k, v in base.items()}

    def cumulative(counts: list[float]) -> dict[str, float]:
        c = np.cumsum(counts)
        out = {
            f"{le:g}" if le < 1 else "1.0": float(v) / secs for le, v in zip(SCORE_BUCKETS, c, strict=True)
        }
        out["+Inf"] = float(c[-1]) / secs
        return out

    answers = {
        promql.request_rate(model, canary, window): _one(n_canary / secs),
        promql.request_rate(model, stable, window): _one(n_stable / secs),
        promql.error_rate(model, canary, window): _one(err_canary),
        promql.error_rate(model, stable, window): _one(err_stable),
        promql.p99_latency(model, canary, window): _one(p99_canary),
        promql.p99_latency(model, stable, window): _one(p99_stable),
        shadow_comparison_rate(model, stable, canary, window): _one(n_shadow / secs),
        promql.shadow_agreement_rate(model, stable, canary, window): _one(agreement),
        promql.confidence_histogram(model, canary, window): _by("le", cumulative(conf_canary)),
        promql.confidence_histogram(model, stable, window): _by("le", cumulative(conf_stable)),
        label_rate(model, canary, window): _by("label", {k: v / secs for k, v in labels_canary.items()}),
        label_rate(model, stable, window): _by("label", {k: v / secs for k, v in labels_stable.items()}),
    }
    if n_shadow == 0:
        del answers[shadow_comparison_rate(model, stable, canary, window)]
        answers[promql.shadow_agreement_rate(model, stable, canary, window)] = _one(float("nan"))
    return answers


def broken_scenario(**kw) -> dict[str, list[dict]]:
    """A canary exported with permuted labels: answers fast and confidently, but the wrong label."""
    n_canary = kw.pop("n_canary", 600)
    permuted = dict(zip(LABELS, (0.05, 0.1, 0.45, 0.1, 0.3), strict=True))
    return scenario(
        n_canary=n_canary, agreement=0.08, labels_canary={k: v * n_canary for k, v in permuted.items()}, **kw
    )


def write_evaluation(repo: Path, model: str, version: str, accuracy: float, macro_f1: float, **extra) -> Path:
    """`<repo>/<model>/<version>/evaluation.json` shaped like export/exporter.py writes it."""
    d = repo / model / version
    d.mkdir(parents=True, exist_ok=True)
    report = {
        "model": model,
        "version": int(version),
        "task": "classification",
        "data": "/data/intent_cs_demo/dev.jsonl",
        "n": 200,
        "accuracy": accuracy,
        "macro_f1": macro_f1,
        "ece": 0.05,
        "per_label": {label: {"precision": 0.8, "recall": 0.8, "f1": 0.8, "support": 40} for label in LABELS},
        **extra,
    }
    (d / "evaluation.json").write_text(json.dumps(report, ensure_ascii=False), "utf-8")
    return d
