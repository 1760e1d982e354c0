"""Alert rules: the committed rule file is the generator's output, promtool accepts it and its unit tests pass,
every alert has a runbook and is tested firing and silent, and a broken copy (bad syntax, unknown metric,
wrong threshold) fails the same checks `make rules-check` runs, with a message naming the rule."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from observe import check, rules

ROOT = Path(__file__).resolve().parent.parent
needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed (apt-get install prometheus)"
)

EXPECTED_ALERTS = {
    "KefuGatewayErrorBudgetBurn",
    "KefuGatewayLatencyBudgetBurn",
    "KefuWorkerQueueSaturated",
    "KefuWorkerNotReady",
    "KefuFaqStoreDown",
    "KefuHandoffRateSpike",
    "KefuCanaryWorseThanStable",
}


def broken_copy(tmp_path: Path, old: str, new: str) -> tuple[Path, Path]:
    """The rule file with `old` replaced by `new`, next to copies of the promtool tests (same relative paths)."""
    text = rules.RULES_FILE.read_text("utf-8")
    assert old in text, f"{old!r} not in the rule file"
    (tmp_path / "tests").mkdir(parents=True)
    rule_file = tmp_path / "kefu-rules.yaml"
    rule_file.write_text(text.replace(old, new, 1), "utf-8")
    for t in check.RULE_TESTS:
        shutil.copy(t, tmp_path / "tests" / t.name)
    return rule_file, tmp_path / "tests"


def test_rule_file_is_generated_and_single_source():
    assert rules.main(["--check"]) == 0, "run python -m observe.rules"
    doc = yaml.safe_load(rules.RULES_FILE.read_text("utf-8"))
    assert list(doc) == ["groups"]
    alerts = {r["alert"] for g in doc["groups"] for r in g["rules"] if "alert" in r}
    assert alerts == EXPECTED_ALERTS
    # the promtool tests load the chart's file itself, not a copy
    for t in check.RULE_TESTS:
        assert yaml.safe_load(t.read_text("utf-8"))["rule_files"] == ["../kefu-rules.yaml"]


@needs_promtool
def test_promtool_check_names_and_runbooks_are_clean():
    assert check.check_rule_file() == []
    for alert in EXPECTED_ALERTS:
        page = ROOT / "docs" / "runbooks" / f"{alert}.md"
        text = page.read_text("utf-8")
        for section in ("**Meaning.**", "**Impact.**", "**Diagnosis.**", "**Remedies.**"):
            assert section in text, f"{page.name} lacks {section}"


@needs_promtool
def test_promtool_unit_tests_pass_and_cover_every_alert_both_ways():
    ok, out = check.run_rule_tests()
    assert ok, out
    assert "SUCCESS" in out
    assert check.coverage() == []
    groups, cases = check.count_tests()
    assert groups >= 14 and cases >= 20


def test_slo_burn_windows_follow_the_workbook():
    doc = yaml.safe_load(rules.RULES_FILE.read_text("utf-8"))
    burn = [r for g in doc["groups"] for r in g["rules"] if r.get("alert") == "KefuGatewayErrorBudgetBurn"]
    got = {(r["labels"]["severity"], r["labels"]["window"]) for r in burn}
    assert got == {("page", "1h"), ("page", "6h"), ("ticket", "1d"), ("ticket", "3d")}
    fast = next(r for r in burn if r["labels"]["window"] == "1h")["expr"]
    assert "ratio_rate1h > (14.4 * 0.005)" in fast and "ratio_rate5m > (14.4 * 0.005)" in fast


@needs_promtool
def test_broken_syntax_fails_with_the_rule_named(tmp_path):
    rule_file, _ = broken_copy(
        tmp_path, "max by (namespace) (kefu_faq_store_up) == 0", "max by (namespace) (kefu_faq_store_up == 0"
    )
    problems = [str(p) for p in check.check_rule_file(rule_file, ROOT)]
    assert any("promtool check rules failed" in p and "KefuFaqStoreDown" in p for p in problems), problems
    assert any(p.startswith("alert KefuFaqStoreDown") and "does not parse" in p for p in problems), problems


@needs_promtool
def test_unknown_metric_name_fails(tmp_path):
    rule_file, _ = broken_copy(tmp_path, "kefu_worker_model_ready == 0", "kefu_worker_model_readyy == 0")
    problems = [str(p) for p in check.check_rule_file(rule_file, ROOT)]
    assert len(problems) == 1, problems
    assert problems[0].startswith("alert KefuWorkerNotReady (rule ")
    assert problems[0].endswith(
        ": unknown metric name(s) kefu_worker_model_readyy: not in the services' METRIC_NAMES, "
        "the external whitelist, Prometheus built-ins or the recording rules"
    )


@needs_promtool
def test_missing_runbook_and_wrong_threshold_fail(tmp_path):
    rule_file, tests = broken_copy(
        tmp_path, "runbook_url: docs/runbooks/KefuFaqStoreDown.md", "runbook_url: x.md"
    )
    problems = [str(p) for p in check.check_rule_file(rule_file, ROOT)]
    assert any("KefuFaqStoreDown" in p and "runbook_url 'x.md'" in p for p in problems), problems

    # an alert that no longer fires when it should: the promtool unit tests catch it
    rule_file, tests = broken_copy(
        tmp_path / "threshold", "kefu_worker_model_ready == 0", "kefu_worker_model_ready < 0"
    )
    ok, out = check.run_rule_tests(sorted(tests.glob("*.yaml")))
    assert not ok
    assert "KefuWorkerNotReady" in out and "FAILED" in out
