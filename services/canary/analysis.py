"""Online gates: canary vs stable from Prometheus, each with a verdict, the numbers, and by how much it missed.

Every query comes from `promql.py` (the same expressions as the canary dashboard and alerts) or, where it has
none, from `prometheus.py`. Rates are turned into counts with `increase = rate x window`. A gate with fewer samples
than its minimum is INCONCLUSIVE (never a pass); so is one whose query failed (Prometheus down is not evidence
that the canary is fine). The offline gate (evaluation.json) lives in `offline.py`.

| gate | observed | passes when |
|---|---|---|
| error_rate | canary and stable error fractions | canary <= max(stable x max_ratio, stable + max_increase) |
| latency_p99 | canary and stable p99 (ms) | canary <= max(stable x max_ratio, stable + max_increase_ms) |
| shadow_agreement | share of shadowed requests with the same top answer | >= min_agreement |
| confidence_shift | PSI of the confidence histograms (`stats.psi`) | <= max_psi |
| label_shift | PSI or total variation of predicted-label shares | <= max |
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from enum import StrEnum

from services.canary import promql
from services.canary.policy import (
    AgreementGate,
    ConfidenceShiftGate,
    ErrorRateGate,
    GatesConfig,
    LabelShiftGate,
    LatencyGate,
)
from services.canary.prometheus import (
    PrometheusClient,
    PrometheusError,
    label_rate,
    shadow_comparison_rate,
    window_seconds,
)
from services.canary.stats import align, histogram_bins, psi, total_variation


class Status(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


@dataclass
class GateResult:
    """One gate's verdict. `observed` holds the measured numbers, `threshold` the rule, `message` the story."""

    name: str
    status: Status
    observed: dict[str, float | None]
    threshold: str
    message: str

    @property
    def passed(self) -> bool:
        return self.status == Status.PASS

    def to_dict(self) -> dict:
        return {**asdict(self), "status": self.status.value, "passed": self.passed}


@dataclass
class Analysis:
    """All gates of one analysis. Verdict: fail if any gate failed, else inconclusive if any was, else pass."""

    model: str
    stable: str
    canary: str
    window: str
    results: list[GateResult] = field(default_factory=list)

    @property
    def verdict(self) -> Status:
        statuses = {r.status for r in self.results}
        if Status.FAIL in statuses:
            return Status.FAIL
        if Status.INCONCLUSIVE in statuses or not self.results:
            return Status.INCONCLUSIVE
        return Status.PASS

    def failed(self) -> list[GateResult]:
        return [r for r in self.results if r.status == Status.FAIL]

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "stable": self.stable,
            "canary": self.canary,
            "window": self.window,
            "verdict": self.verdict.value,
            "gates": [r.to_dict() for r in self.results],
        }

    def table(self) -> str:
        """A plain-text table: gate, status, observed, threshold, then the messages."""
        head = f"analysis of {self.model}: canary {self.canary} vs stable {self.stable} over {self.window}"
        rows = [("gate", "status", "observed", "threshold")]
        for r in self.results:
            rows.append((r.name, r.status.value.upper(), _fmt_observed(r.observed), r.threshold))
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        lines = [head, ""]
        for i, row in enumerate(rows):
            lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
        lines.append("")
        lines += [f"- {r.name}: {r.message}" for r in self.results]
        lines.append(f"verdict: {self.verdict.value.upper()}")
        return "\n".join(lines)


def _fmt_observed(observed: dict[str, float | None]) -> str:
    def one(v: float | None) -> str:
        if v is None:
            return "n/a"
        if float(v).is_integer() and abs(v) >= 1:
            return str(int(v))
        return f"{v:.4g}"

    return " ".join(f"{k}={one(v)}" for k, v in observed.items())


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


class Analyzer:
    """Runs the configured online gates for one model's canary against Prometheus."""

    def __init__(self, prometheus: PrometheusClient, gates: GatesConfig):
        self.prom = prometheus
        self.gates = gates

    def analyze(self, model: str, stable: str, canary: str, window: str = "5m") -> Analysis:
        seconds = window_seconds(window)
        analysis = Analysis(model, stable, canary, window)
        checks = [
            ("error_rate", self.gates.error_rate, self._error_rate),
            ("latency_p99", self.gates.latency_p99, self._latency),
            ("shadow_agreement", self.gates.shadow_agreement, self._agreement),
            ("confidence_shift", self.gates.confidence_shift, self._confidence),
            ("label_shift", self.gates.label_shift, self._labels),
        ]
        for name, cfg, fn in checks:
            if cfg is None:
                continue
            try:
                result = fn(cfg, model, stable, canary, window, seconds)
            except PrometheusError as e:
                result = GateResult(name, Status.INCONCLUSIVE, {}, "-", f"no evidence, query failed: {e}")
            analysis.results.append(result)
        return analysis

    # ---- helpers -------------------------------------------------------------------------------------------

    def _count(self, expr: str, seconds: float) -> float:
        rate = self.prom.scalar(expr)
        return 0.0 if rate is None else rate * seconds

    @staticmethod
    def _too_few(name: str, observed: dict, threshold: str, counts: dict[str, float], need: int, what: str):
        short = {k: v for k, v in counts.items() if v < need}
        if not short:
            return None
        have = ", ".join(f"{k} {v:.0f}" for k, v in short.items())
        return GateResult(
            name,
            Status.INCONCLUSIVE,
            observed,
            threshold,
            f"not enough data: {have} {what} (need {need} each)",
        )

    # ---- gates ---------------------------------------------------------------------------------------------

    def _error_rate(self, cfg: ErrorRateGate, model, stable, canary, window, seconds) -> GateResult:
        name = "error_rate"
        threshold = f"<= max(stable x {cfg.max_ratio:g}, stable + {_pct(cfg.max_increase)})"
        n_c = self._count(promql.request_rate(model, canary, window), seconds)
        n_s = self._count(promql.request_rate(model, stable, window), seconds)
        observed: dict[str, float | None] = {"canary_requests": round(n_c), "stable_requests": round(n_s)}
        if res := self._too_few(
            name, observed, threshold, {"canary": n_c, "stable": n_s}, cfg.min_requests, "requests"
        ):
            return res
        c = self.prom.scalar(promql.error_rate(model, canary, window)) or 0.0
        s = self.prom.scalar(promql.error_rate(model, stable, window)) or 0.0
        observed |= {"canary": c, "stable": s}
        allowed = max(s * cfg.max_ratio, s + cfg.max_increase)
        if c <= allowed:
            return GateResult(
                name, Status.PASS, observed, threshold,
                f"canary {_pct(c)} vs stable {_pct(s)} (allowed up to {_pct(allowed)})",
            )  # fmt: skip
        return GateResult(
            name, Status.FAIL, observed, threshold,
            f"canary error rate {_pct(c)} vs stable {_pct(s)}: {100 * (c - allowed):.2f} points over the allowed "
            f"{_pct(allowed)}",
        )  # fmt: skip

    def _latency(self, cfg: LatencyGate, model, stable, canary, window, seconds) -> GateResult:
        name = "latency_p99"
        threshold = f"<= max(stable x {cfg.max_ratio:g}, stable + {cfg.max_increase_ms:g} ms)"
        n_c = self._count(promql.request_rate(model, canary, window), seconds)
        n_s = self._count(promql.request_rate(model, stable, window), seconds)
        observed: dict[str, float | None] = {"canary_requests": round(n_c), "stable_requests": round(n_s)}
        if res := self._too_few(
            name, observed, threshold, {"canary": n_c, "stable": n_s}, cfg.min_requests, "requests"
        ):
            return res
        c = self.prom.scalar(promql.p99_latency(model, canary, window))
        s = self.prom.scalar(promql.p99_latency(model, stable, window))
        if c is None or s is None:
            return GateResult(
                name, Status.INCONCLUSIVE, observed, threshold, "no latency histogram in the window"
            )
        c_ms, s_ms = 1000 * c, 1000 * s
        observed |= {"canary_ms": c_ms, "stable_ms": s_ms}
        allowed = max(s_ms * cfg.max_ratio, s_ms + cfg.max_increase_ms)
        if c_ms <= allowed:
            return GateResult(
                name, Status.PASS, observed, threshold,
                f"canary p99 {c_ms:.1f} ms vs stable {s_ms:.1f} ms (allowed up to {allowed:.1f} ms)",
            )  # fmt: skip
        over = "beyond the last histogram bucket" if math.isinf(c_ms) else f"{c_ms - allowed:.1f} ms over"
        return GateResult(
            name, Status.FAIL, observed, threshold,
            f"canary p99 {c_ms:.1f} ms vs stable {s_ms:.1f} ms: {over} the allowed {allowed:.1f} ms",
        )  # fmt: skip

    def _agreement(self, cfg: AgreementGate, model, stable, canary, window, seconds) -> GateResult:
        name = "shadow_agreement"
        threshold = f">= {_pct(cfg.min_agreement)}"
        n = self._count(shadow_comparison_rate(model, stable, canary, window), seconds)
        observed: dict[str, float | None] = {"comparisons": round(n)}
        if res := self._too_few(name, observed, threshold, {"shadow": n}, cfg.min_comparisons, "comparisons"):
            return res
        rate = self.prom.scalar(promql.shadow_agreement_rate(model, stable, canary, window))
        if rate is None:
            return GateResult(
                name, Status.INCONCLUSIVE, observed, threshold, "no shadow comparisons in the window"
            )
        observed["agreement"] = rate
        if rate >= cfg.min_agreement:
            return GateResult(
                name, Status.PASS, observed, threshold,
                f"canary agrees with stable on {_pct(rate)} of {n:.0f} shadowed requests",
            )  # fmt: skip
        return GateResult(
            name, Status.FAIL, observed, threshold,
            f"canary agrees with stable on only {_pct(rate)} of {n:.0f} shadowed requests: "
            f"{100 * (cfg.min_agreement - rate):.2f} points below the required {_pct(cfg.min_agreement)}",
        )  # fmt: skip

    def _confidence(self, cfg: ConfidenceShiftGate, model, stable, canary, window, seconds) -> GateResult:
        name = "confidence_shift"
        threshold = f"PSI <= {cfg.max_psi:g}"
        hist = {}
        for side, version in (("canary", canary), ("stable", stable)):
            rates = self.prom.by_label(promql.confidence_histogram(model, version, window), "le")
            hist[side] = {float(le): r * seconds for le, r in rates.items()}
        edges_c, bins_c = histogram_bins(hist["canary"])
        edges_s, bins_s = histogram_bins(hist["stable"])
        n_c, n_s = float(bins_c.sum()), float(bins_s.sum())
        observed: dict[str, float | None] = {"canary_samples": round(n_c), "stable_samples": round(n_s)}
        if res := self._too_few(
            name, observed, threshold, {"canary": n_c, "stable": n_s}, cfg.min_samples, "answers"
        ):
            return res
        if edges_c != edges_s:
            return GateResult(
                name, Status.INCONCLUSIVE, observed, threshold,
                f"the versions' confidence histograms have different buckets ({len(edges_c)} vs {len(edges_s)})",
            )  # fmt: skip
        value = psi(bins_c, bins_s)
        observed["psi"] = value
        mean_c = _hist_mean(edges_c, bins_c)
        mean_s = _hist_mean(edges_s, bins_s)
        detail = f"mean confidence {mean_c:.3f} vs stable {mean_s:.3f}"
        if value <= cfg.max_psi:
            return GateResult(name, Status.PASS, observed, threshold, f"PSI {value:.3f} ({detail})")
        return GateResult(
            name, Status.FAIL, observed, threshold,
            f"confidence distribution shifted: PSI {value:.3f}, {value - cfg.max_psi:.3f} above the allowed "
            f"{cfg.max_psi:g} ({detail})",
        )  # fmt: skip

    def _labels(self, cfg: LabelShiftGate, model, stable, canary, window, seconds) -> GateResult:
        name = "label_shift"
        threshold = f"{cfg.measure.upper()} <= {cfg.max:g}"
        c = {
            k: v * seconds for k, v in self.prom.by_label(label_rate(model, canary, window), "label").items()
        }
        s = {
            k: v * seconds for k, v in self.prom.by_label(label_rate(model, stable, window), "label").items()
        }
        n_c, n_s = sum(c.values()), sum(s.values())
        observed: dict[str, float | None] = {"canary_samples": round(n_c), "stable_samples": round(n_s)}
        counts = {"canary": n_c, "stable": n_s}
        if res := self._too_few(name, observed, threshold, counts, cfg.min_samples, "predictions"):
            return res
        labels, vc, vs = align(c, s)
        value = psi(vc, vs) if cfg.measure == "psi" else total_variation(vc, vs)
        observed[cfg.measure] = value
        shares_c, shares_s = vc / vc.sum(), vs / vs.sum()
        moves = sorted(range(len(labels)), key=lambda i: -abs(shares_c[i] - shares_s[i]))[:3]
        detail = ", ".join(f"{labels[i]} {_pct(shares_s[i])} -> {_pct(shares_c[i])}" for i in moves)
        if value <= cfg.max:
            return GateResult(
                name,
                Status.PASS,
                observed,
                threshold,
                f"{cfg.measure.upper()} {value:.3f} (largest moves: {detail})",
            )
        return GateResult(
            name, Status.FAIL, observed, threshold,
            f"predicted labels shifted: {cfg.measure.upper()} {value:.3f}, {value - cfg.max:.3f} above the allowed "
            f"{cfg.max:g} (stable -> canary: {detail})",
        )  # fmt: skip


def _hist_mean(edges: list[float], counts) -> float:
    """Mean of a histogram using bin midpoints (the +Inf bin, empty for confidences, counts at its lower edge)."""
    lows = [0.0, *edges[:-1]]
    mids = [(lo + hi) / 2 if math.isfinite(hi) else lo for lo, hi in zip(lows, edges, strict=True)]
    total = float(sum(counts))
    return float(sum(m * c for m, c in zip(mids, counts, strict=True)) / total) if total else float("nan")
