"""A small Prometheus HTTP API client (`/api/v1/query`, instant vectors) and the queries promql.py lacks.

The gates read instant vectors only. A result is a list of `Sample(labels, value)`; an empty list means "no
series" (no traffic in the window), and a NaN value means a ratio with a zero denominator: both are "no data"
to the caller, never zero.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import httpx

from services.canary import promql

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
_PART = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")


class PrometheusError(RuntimeError):
    """Prometheus could not be reached or refused the query; the message says which and why."""


@dataclass(frozen=True)
class Sample:
    labels: dict[str, str]
    value: float


def window_seconds(window: str) -> float:
    """Seconds in a Prometheus duration (`5m`, `1h30m`, `90s`)."""
    promql.check_window(window)
    if window.startswith("$"):
        raise ValueError(f"window {window!r} is a Grafana variable, not a duration")
    return float(sum(int(n) * _UNITS[u] for n, u in _PART.findall(window)))


def duration(seconds: float) -> str:
    """A Prometheus duration for `seconds` (whole seconds, at least 1s)."""
    return f"{max(1, math.ceil(seconds))}s"


class PrometheusClient:
    """Instant queries against `base_url` (e.g. http://prometheus:9090). `transport` lets tests answer in-process."""

    def __init__(self, base_url: str, timeout_s: float = 10.0, transport: httpx.BaseTransport | None = None):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"Prometheus URL must start with http:// or https://, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(base_url=self.base_url, timeout=timeout_s, transport=transport)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> PrometheusClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def query(self, expr: str) -> list[Sample]:
        """Evaluate `expr` now; returns the instant vector (or a one-sample list for a scalar)."""
        try:
            resp = self._client.get("/api/v1/query", params={"query": expr})
        except httpx.HTTPError as e:
            raise PrometheusError(f"Prometheus at {self.base_url} unreachable: {e}") from e
        try:
            body = resp.json()
        except ValueError:
            raise PrometheusError(
                f"Prometheus answered HTTP {resp.status_code} with a non-JSON body: {resp.text[:200]!r}"
            ) from None
        if resp.status_code != 200 or body.get("status") != "success":
            raise PrometheusError(
                f"Prometheus refused the query (HTTP {resp.status_code}, {body.get('errorType', '?')}): "
                f"{body.get('error', resp.text[:200])} -- query: {expr}"
            )
        data = body.get("data") or {}
        kind, result = data.get("resultType"), data.get("result")
        try:
            if kind == "vector":
                return [Sample(dict(r.get("metric", {})), float(r["value"][1])) for r in result]
            if kind == "scalar":
                return [Sample({}, float(result[1]))]
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise PrometheusError(f"malformed Prometheus {kind} result ({e}) for query: {expr}") from e
        raise PrometheusError(f"expected an instant vector, Prometheus returned {kind!r} for query: {expr}")

    def scalar(self, expr: str) -> float | None:
        """The single value of `expr`, or None when there is no series or the value is NaN (no data)."""
        samples = self.query(expr)
        if not samples:
            return None
        if len(samples) > 1:
            raise PrometheusError(f"expected one series, got {len(samples)} for query: {expr}")
        value = samples[0].value
        return None if math.isnan(value) else value

    def by_label(self, expr: str, label: str) -> dict[str, float]:
        """{value of `label`: sample value} of a vector; NaN samples dropped."""
        out: dict[str, float] = {}
        for s in self.query(expr):
            if label not in s.labels:
                raise PrometheusError(f"series without label {label!r} in the result of: {expr}")
            if not math.isnan(s.value):
                out[s.labels[label]] = s.value
        return out


# ---- queries not in promql.py (rates; multiply by the window's seconds for counts: increase = rate x range) ----


def shadow_comparison_rate(model: str, stable: str, canary: str, window: str = "5m") -> str:
    """Shadow comparisons per second between `stable` and `canary` of `model` (agreeing or not)."""
    sel = promql.selector(promql.SHADOW, model=model, stable_version=stable, canary_version=canary)
    return f"sum(rate({sel}[{promql.check_window(window)}]))"


def label_rate(model: str, version: str, window: str = "5m", role: promql.Role = None) -> str:
    """Predicted top labels per second of `version` of `model`, one series per `label` (counts, not shares)."""
    sel = promql.selector(promql.PREDICTIONS, promql.role_matcher(role), model=model, version=version)
    return f"sum by (label) (rate({sel}[{promql.check_window(window)}]))"
