"""The gateway overview dashboard: traffic, SLIs and burn rate, chat decisions, cache, rate limits, upstreams."""

from __future__ import annotations

from grafana.builder import RI, Panel, Row, dashboard, q, quantiles
from observe import rules
from services.canary import promql


def gateway() -> dict:
    api = 'route=~"/v1/.+"'
    chat = 'route="/v1/chat"'
    req = "kefu_gateway_requests_total"
    api_errors = promql.ratio(
        f'sum(rate({req}{{{api}, status=~"5.."}}[{RI}]))', f"sum(rate({req}{{{api}}}[{RI}]))"
    )
    route_errors = promql.ratio(
        f'sum by (route) (rate({req}{{status=~"5.."}}[{RI}]))', f"sum by (route) (rate({req}[{RI}]))"
    )
    handoff_ratio = promql.ratio(
        f"sum(rate(kefu_gateway_handoffs_total[{RI}]))", f"sum(rate(kefu_gateway_actions_total[{RI}]))"
    )
    items = [
        Panel("Requests/s", [q(f"sum(rate({req}{{{api}}}[{RI}]))", "req/s")], "stat", "reqps", w=6, h=4),
        Panel(
            "Availability (non-5xx, /v1)",
            [q(f"1 - {api_errors}")],
            "stat",
            "percentunit",
            f"SLO {rules.AVAILABILITY_SLO:.1%} of /v1 requests answer without a 5xx.",
            w=6,
            h=4,
            thresholds=[(0, "red"), (rules.AVAILABILITY_SLO, "green")],
        ),
        Panel(
            "/v1/chat within 250 ms",
            [
                q(
                    f'sum(rate(kefu_gateway_request_duration_seconds_bucket{{{chat}, le="{rules.LATENCY_THRESHOLD}"}}'
                    f"[{RI}])) / sum(rate(kefu_gateway_request_duration_seconds_count{{{chat}}}[{RI}]))"
                )
            ],
            "stat",
            "percentunit",
            f"SLO {rules.LATENCY_SLO:.0%} of /v1/chat requests within 250 ms.",
            w=6,
            h=4,
            thresholds=[(0, "red"), (rules.LATENCY_SLO, "green")],
        ),
        Panel(
            "Hand-over rate",
            [q(handoff_ratio)],
            "stat",
            "percentunit",
            w=6,
            h=4,
        ),
        Row("Traffic and errors"),
        Panel(
            "Requests/s by route and status",
            [q(f"sum by (route, status) (rate({req}[{RI}]))", "{{route}} {{status}}")],
            unit="reqps",
            stack=True,
        ),
        Panel(
            "5xx ratio by route",
            [q(route_errors, "{{route}}")],
            unit="percentunit",
            thresholds=[(1 - rules.AVAILABILITY_SLO, "red")],
        ),
        Panel(
            "Latency percentiles by route",
            quantiles("kefu_gateway_request_duration_seconds", "route"),
            unit="s",
            thresholds=[(float(rules.LATENCY_THRESHOLD), "red")],
        ),
        Panel(
            "SLO error-budget burn rate (1h)",
            [
                q(
                    f"kefu:slo_availability_errors:ratio_rate1h / {1 - rules.AVAILABILITY_SLO:g}",
                    "availability",
                ),
                q(f"kefu:slo_latency_slow:ratio_rate1h / {1 - rules.LATENCY_SLO:g}", "latency"),
            ],
            unit="short",
            description="1 = spending the 30-day budget exactly; the fast page fires above 14.4 (recording rules).",
            thresholds=[(6, "orange"), (14.4, "red")],
        ),
        Row("Chat decisions"),
        Panel(
            "Actions/s",
            [q(f"sum by (action) (rate(kefu_gateway_actions_total[{RI}]))", "{{action}}")],
            unit="reqps",
            stack=True,
        ),
        Panel(
            "Hand-overs by reason",
            [q(f"sum by (reason) (rate(kefu_gateway_handoffs_total[{RI}]))", "{{reason}}")],
            unit="reqps",
            stack=True,
        ),
        Panel(
            "Cache hit ratio",
            [
                q(
                    promql.ratio(
                        f'sum(rate(kefu_gateway_cache_requests_total{{result="hit"}}[{RI}]))',
                        f"sum(rate(kefu_gateway_cache_requests_total[{RI}]))",
                    ),
                    "hit ratio",
                )
            ],
            unit="percentunit",
            minimum=0,
            maximum=1,
        ),
        Panel(
            "Rate-limit rejections (429) by tenant, overload shedding (503)",
            [
                q(f"sum by (tenant) (rate(kefu_gateway_rate_limited_total[{RI}]))", "429 {{tenant}}"),
                q(f"sum by (route) (rate(kefu_gateway_shed_total[{RI}]))", "503 overloaded {{route}}"),
            ],
            unit="reqps",
        ),
        Panel(
            "Degraded answers by mode",
            [q(f"sum by (mode) (rate(kefu_gateway_degraded_total[{RI}]))", "{{mode}}")],
            unit="reqps",
        ),
        Row("Upstreams (workers, FAQ store)"),
        Panel(
            "Upstream p99 latency",
            quantiles("kefu_gateway_upstream_duration_seconds", "upstream", qs=(0.99,)),
            unit="s",
        ),
        Panel(
            "Upstream failures by outcome, retries",
            [
                q(
                    f'sum by (upstream, outcome) (rate(kefu_gateway_upstream_duration_seconds_count{{outcome!="ok"}}[{RI}]))',
                    "{{upstream}} {{outcome}}",
                ),
                q(
                    f"sum by (upstream) (rate(kefu_gateway_upstream_retries_total[{RI}]))",
                    "{{upstream}} retries",
                ),
            ],
            unit="reqps",
        ),
        Panel(
            "Upstream up / circuit state",
            [
                q("min by (upstream) (kefu_gateway_upstream_up)", "{{upstream}} up"),
                q(
                    "max by (upstream) (kefu_gateway_circuit_state)",
                    "{{upstream}} circuit (0 closed, 2 open)",
                ),
            ],
            w=24,
        ),
    ]
    return dashboard(
        "kefu-gateway",
        "kefu / Gateway overview",
        "Traffic, errors, latency, chat decisions, hand-overs, cache, rate limits and upstreams of the gateway.",
        items,
        [],
    )
