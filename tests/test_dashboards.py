"""Dashboards as code: regenerating gives the committed files (and the chart's copies), every query parses and
uses only exported metric names, the panels the issue asks for exist, and a broken copy (bad syntax, unknown
metric, stray Grafana variable, a gauge read as a histogram, a bad variable query) fails the check."""

from __future__ import annotations

import copy
import json
import shutil

import pytest

from grafana import check, generate
from grafana.boards import DASHBOARDS
from observe.promql_check import EXTERNAL, exported_sample_names, metric_names

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed (apt-get install prometheus)"
)


@pytest.fixture(scope="module")
def boards() -> dict[str, dict]:
    return check.load(sorted(check.DASHBOARD_DIR.glob("*.json")))


def titles(board: dict) -> str:
    return " | ".join(p["title"] for p in board["panels"]).lower()


def test_regenerating_gives_identical_files_and_chart_copies():
    assert generate.stale() == []
    for name in generate.render():
        a = (generate.OUT_DIRS[0] / name).read_bytes()
        assert a == (generate.OUT_DIRS[1] / name).read_bytes()
    assert sorted(p.name for p in check.DASHBOARD_DIR.glob("*.json")) == sorted(
        f"{n}.json" for n in DASHBOARDS
    )


@needs_promtool
def test_every_query_parses_and_uses_exported_names(boards):
    assert check.check_dashboards(boards) == []
    exprs = {k: v for name, b in boards.items() for k, v in check.expressions(b, name).items()}
    assert len(exprs) >= 60
    used = set().union(*(metric_names(e) for e in exprs.values()))
    exported = exported_sample_names()
    # the dashboards really read the services' metrics (not only recording rules) and the GPU ones are DCGM's
    assert len(used & exported) >= 25
    assert used & EXTERNAL == {"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED"}


def test_dashboards_have_the_panels_asked_for(boards):
    gw = titles(boards["gateway.json"])
    for word in ("requests/s", "5xx", "latency", "actions", "hand-over", "cache hit", "rate-limit"):
        assert word in gw, word
    wk = titles(boards["workers.json"])
    for word in ("queue time", "batch size", "compute time", "ready", "gpu utilisation", "gpu memory"):
        assert word in wk, word
    faq = titles(boards["faq-store.json"])
    for word in ("search latency", "score distribution", "index size"):
        assert word in faq, word
    canary = titles(boards["canary.json"])
    for word in ("error rate", "p99", "shadow agreement", "confidence distribution", "predicted labels"):
        assert word in canary, word
    for name, board in boards.items():
        assert "do not edit" in board["description"], name
        assert board["uid"].startswith("kefu-") and board["templating"]["list"][0]["type"] == "datasource"
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), name


def broken(boards: dict, panel_title: str, transform) -> dict:
    """A deep copy of the gateway dashboard with `transform` applied to one panel's first query."""
    board = copy.deepcopy(boards["gateway.json"])
    panel = next(p for p in board["panels"] if p["title"] == panel_title)
    panel["targets"][0]["expr"] = transform(panel["targets"][0]["expr"])
    return {"gateway.json": board}


def problems(boards: dict) -> list[str]:
    return [str(p) for p in check.check_dashboards(boards)]


@needs_promtool
def test_bad_syntax_fails_naming_the_panel(boards):
    got = problems(broken(boards, "Actions/s", lambda e: e.replace("))", ")", 1)))
    assert len(got) == 1, got
    assert got[0].startswith("gateway.json / panel 'Actions/s' / A: PromQL does not parse:")
    assert "parse error" in got[0]


@needs_promtool
def test_unknown_metric_fails_naming_it(boards):
    got = problems(
        broken(
            boards,
            "Actions/s",
            lambda e: e.replace("kefu_gateway_actions_total", "kefu_gateway_action_total"),
        )
    )
    assert got == [
        "gateway.json / panel 'Actions/s' / A: unknown metric name(s) kefu_gateway_action_total: not in the "
        "services' METRIC_NAMES, the external whitelist, Prometheus built-ins or the recording rules"
    ]


@needs_promtool
def test_gauge_read_as_histogram_and_stray_variable_fail(boards):
    got = problems(
        broken(
            boards, "Upstream up / circuit state", lambda e: e.replace("upstream_up", "upstream_up_bucket")
        )
    )
    assert len(got) == 1 and "kefu_gateway_upstream_up_bucket" in got[0]
    # a Grafana variable outside a label string is not PromQL
    got = problems(broken(boards, "Actions/s", lambda e: e.replace("sum by (action)", "sum by ($group)")))
    assert len(got) == 1 and "does not parse" in got[0]


@needs_promtool
def test_bad_variable_query_fails(boards):
    board = copy.deepcopy(boards["workers.json"])
    var = next(v for v in board["templating"]["list"] if v["name"] == "model")
    var["query"]["query"] = "label_values(kefu_worker_model_readiness, model)"
    got = problems({"workers.json": board})
    assert got == [
        "workers.json / variable 'model': unknown metric name(s) kefu_worker_model_readiness: not in the "
        "services' METRIC_NAMES, the external whitelist, Prometheus built-ins or the recording rules"
    ]


@needs_promtool
def test_check_cli_on_a_broken_file(boards, tmp_path, capsys):
    board = broken(boards, "Actions/s", lambda e: e + " +")["gateway.json"]
    path = tmp_path / "gateway.json"
    path.write_text(json.dumps(board), "utf-8")
    assert check.main([str(path)]) == 1
    err = capsys.readouterr().err
    assert "FAIL gateway.json / panel 'Actions/s' / A: PromQL does not parse" in err
