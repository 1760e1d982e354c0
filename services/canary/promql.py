"""PromQL for comparing a canary version with the stable one: the single source of these expressions.

The Grafana canary dashboard (`grafana/`), the "canary worse than stable" alert rules and the rollout gates of
the canary tool (issue 7) all build their queries here, so what a human sees, what pages and what promotes or
rolls back a version are the same numbers.

Every function returns a PromQL string over the gateway's model metrics (`services/gateway/metrics.py`):

| metric | labels |
|---|---|
| kefu_gateway_model_requests_total | model, version, role, outcome |
| kefu_gateway_model_duration_seconds | model, version, role (histogram) |
| kefu_gateway_model_predictions_total | model, version, role, label |
| kefu_gateway_model_confidence | model, version, role (histogram, 20 buckets of 0.05) |
| kefu_gateway_shadow_comparisons_total | model, stable_version, canary_version, agree |
| kefu_gateway_shadow_confidence_delta | model, stable_version, canary_version (histogram) |

Roles. The gateway labels every model call with the role of the version that answered it:

- `stable`: the version that serves users by default;
- `canary`: the new version, serving a share of live traffic (its answer goes to the user);
- `shadow`: the new version, called on a copy of the request; its answer is only compared with stable's.

A version is identified by `version`; `role` says how it was called. The functions take `role=None` (every role
the version served under: the usual choice, since a canary is called first as shadow, then as canary), one role,
or a sequence of roles (matched with a regex alternative). Outcomes other than `ok` count as errors.

Values: `model`, `version` and label values are quoted as PromQL strings (escaped), so Grafana variables such as
`"$model"` pass through unchanged. `window` is a Prometheus duration (`5m`, `1h30m`) or `$__rate_interval` /
`$__range` for dashboards; anything else raises `ValueError`.

Ratios count a label value that never occurred (no errors yet) as 0 (`ratio()`); no traffic in the window
gives an empty result (or NaN where the denominator is 0): callers must treat "no data" as "not enough
evidence", never as a pass.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

ROLE_STABLE = "stable"
ROLE_CANARY = "canary"
ROLE_SHADOW = "shadow"
ROLES = (ROLE_STABLE, ROLE_CANARY, ROLE_SHADOW)
# The roles a candidate version is called under (live split and mirrored copies).
CANDIDATE_ROLES = (ROLE_CANARY, ROLE_SHADOW)

REQUESTS = "kefu_gateway_model_requests_total"
DURATION = "kefu_gateway_model_duration_seconds"
PREDICTIONS = "kefu_gateway_model_predictions_total"
CONFIDENCE = "kefu_gateway_model_confidence"
SHADOW = "kefu_gateway_shadow_comparisons_total"
DELTA = "kefu_gateway_shadow_confidence_delta"

OK_OUTCOME = "ok"

_DURATION = re.compile(r"^(?:\d+(?:ms|[smhdwy]))+$")
_GRAFANA_WINDOWS = ("$__rate_interval", "$__interval", "$__range")

Role = str | Sequence[str] | None


def quote(value: str) -> str:
    """A PromQL double-quoted string literal for `value` (backslashes, quotes and newlines escaped)."""
    if not isinstance(value, str):
        raise ValueError(f"label value must be a string, got {value!r}")
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def check_window(window: str) -> str:
    """`window` if it is a Prometheus duration (`5m`, `1h30m`) or a Grafana interval variable."""
    if window in _GRAFANA_WINDOWS or (isinstance(window, str) and _DURATION.match(window)):
        return window
    raise ValueError(f"window {window!r} is not a Prometheus duration like 5m or 1h")


def role_matcher(role: Role) -> str:
    """The `role` label matcher for `role` (None: empty, any role; str: equality; sequence: regex)."""
    if role is None:
        return ""
    roles = (role,) if isinstance(role, str) else tuple(role)
    unknown = [r for r in roles if r not in ROLES and not r.startswith("$")]
    if unknown or not roles:
        raise ValueError(f"role must be one of {', '.join(ROLES)} (or a list of them), got {role!r}")
    if len(roles) == 1:
        return f"role={quote(roles[0])}"
    return f"role=~{quote('|'.join(roles))}"


def selector(metric: str, *matchers: str, **labels: str | None) -> str:
    """`metric{label="value", ...}`: equality matchers from `labels` (None skipped), then raw `matchers`."""
    parts = [f"{k}={quote(v)}" for k, v in labels.items() if v is not None]
    parts += [m for m in matchers if m]
    return f"{metric}{{{', '.join(parts)}}}" if parts else metric


def ratio(numerator: str, denominator: str) -> str:
    """`numerator / denominator` where a missing numerator counts as 0 while the denominator has data.

    A counter with a label value that never occurred (no errors yet, no "agree" yet) has no series at all, so a
    plain division gives no result instead of 0; `or <denominator> * 0` fills those groups with zeros. No
    traffic at all still gives no result.
    """
    return f"({numerator} or {denominator} * 0) / {denominator}"


def request_rate(model: str, version: str, window: str = "5m", role: Role = None) -> str:
    """Model calls per second answered by `version` of `model` (all outcomes)."""
    sel = selector(REQUESTS, role_matcher(role), model=model, version=version)
    return f"sum(rate({sel}[{check_window(window)}]))"


def error_rate(model: str, version: str, window: str = "5m", role: Role = None) -> str:
    """Fraction (0..1) of calls to `version` of `model` whose outcome was not `ok` over `window`."""
    w = check_window(window)
    rm = role_matcher(role)
    errors = selector(REQUESTS, rm, f"outcome!={quote(OK_OUTCOME)}", model=model, version=version)
    total = selector(REQUESTS, rm, model=model, version=version)
    return ratio(f"sum(rate({errors}[{w}]))", f"sum(rate({total}[{w}]))")


def latency_quantile(model: str, version: str, quantile: float, window: str = "5m", role: Role = None) -> str:
    """The `quantile` (0..1) of model call latency in seconds for `version` of `model`, from the histogram."""
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be between 0 and 1, got {quantile}")
    sel = selector(f"{DURATION}_bucket", role_matcher(role), model=model, version=version)
    return f"histogram_quantile({quantile:g}, sum by (le) (rate({sel}[{check_window(window)}])))"


def p99_latency(model: str, version: str, window: str = "5m", role: Role = None) -> str:
    """p99 model call latency in seconds for `version` of `model` over `window`."""
    return latency_quantile(model, version, 0.99, window, role)


def shadow_agreement_rate(model: str, stable: str, canary: str, window: str = "5m") -> str:
    """Fraction (0..1) of shadowed requests where `canary`'s answer agreed with `stable`'s."""
    w = check_window(window)
    agree = selector(SHADOW, model=model, stable_version=stable, canary_version=canary, agree="true")
    total = selector(SHADOW, model=model, stable_version=stable, canary_version=canary)
    return ratio(f"sum(rate({agree}[{w}]))", f"sum(rate({total}[{w}]))")


def shadow_confidence_delta(
    model: str, stable: str, canary: str, quantile: float = 0.5, window: str = "5m"
) -> str:
    """The `quantile` of canary confidence minus stable confidence on shadowed requests (negative: less sure)."""
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be between 0 and 1, got {quantile}")
    sel = selector(f"{DELTA}_bucket", model=model, stable_version=stable, canary_version=canary)
    return f"histogram_quantile({quantile:g}, sum by (le) (rate({sel}[{check_window(window)}])))"


def label_distribution(model: str, version: str, window: str = "5m", role: Role = None) -> str:
    """Share (0..1) of each predicted top label of `version` of `model`: one series per `label`, summing to 1."""
    w = check_window(window)
    sel = selector(PREDICTIONS, role_matcher(role), model=model, version=version)
    return f"sum by (label) (rate({sel}[{w}])) / ignoring (label) group_left sum(rate({sel}[{w}]))"


def confidence_histogram(model: str, version: str, window: str = "5m", role: Role = None) -> str:
    """Rate of `kefu_gateway_model_confidence_bucket` by `le` (cumulative buckets, 0.05 wide, `+Inf` last).

    The per-bin counts (for a PSI between versions) are the differences of consecutive buckets.
    """
    sel = selector(f"{CONFIDENCE}_bucket", role_matcher(role), model=model, version=version)
    return f"sum by (le) (rate({sel}[{check_window(window)}]))"


# ---- per-model comparisons by role (alerts, overview panels): no version needed ------------------------------


def _by(by: Sequence[str]) -> str:
    return f"sum by ({', '.join(by)})"


def error_rate_by_model(role: Role, window: str = "5m", by: Sequence[str] = ("model",)) -> str:
    """Error fraction per `model` (or per the `by` labels) of calls made under `role` (None: any role)."""
    w = check_window(window)
    rm = role_matcher(role)
    errors = selector(REQUESTS, rm, f"outcome!={quote(OK_OUTCOME)}")
    return ratio(f"{_by(by)} (rate({errors}[{w}]))", f"{_by(by)} (rate({selector(REQUESTS, rm)}[{w}]))")


def p99_latency_by_model(role: Role, window: str = "5m", by: Sequence[str] = ("model",)) -> str:
    """p99 model call latency in seconds per `model` (or per the `by` labels) of calls made under `role`."""
    sel = selector(f"{DURATION}_bucket", role_matcher(role))
    return f"histogram_quantile(0.99, {_by((*by, 'le'))} (rate({sel}[{check_window(window)}])))"


def request_rate_by_model(role: Role, window: str = "5m", by: Sequence[str] = ("model",)) -> str:
    """Model calls per second per `model` (or per the `by` labels) made under `role`."""
    return f"{_by(by)} (rate({selector(REQUESTS, role_matcher(role))}[{check_window(window)}]))"


def shadow_agreement_by_model(window: str = "5m") -> str:
    """Shadow agreement fraction per `model`, `stable_version` and `canary_version`."""
    w = check_window(window)
    by = _by(("model", "stable_version", "canary_version"))
    agree = selector(SHADOW, agree="true")
    return ratio(f"{by} (rate({agree}[{w}]))", f"{by} (rate({SHADOW}[{w}]))")
