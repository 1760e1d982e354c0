"""`make rules-check`: every check of the alert rules and dashboards, with figures.

1. the committed rule file and dashboards are what the generators produce;
2. `promtool check rules` on the rule file;
3. every rule expression uses only exported / whitelisted / recorded metric names;
4. every alert has a severity, a summary and a `runbook_url` naming an existing `docs/runbooks/<alert>.md`;
5. `promtool test rules` on `helm/files/rules/tests/*.yaml`, and each alert is tested both firing and silent;
6. the dashboard check (`grafana/check.py`).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import yaml

from grafana import check as dashboard_check
from grafana import generate
from observe import rules
from observe.promql_check import Problem, check_expressions, promtool

ROOT = Path(__file__).resolve().parent.parent
RULE_TESTS = sorted((rules.RULES_FILE.parent / "tests").glob("*.yaml"))


def load_rules(path: Path) -> list[dict]:
    doc = yaml.safe_load(path.read_text("utf-8")) or {}
    return [r for g in doc.get("groups", []) for r in g.get("rules", [])]


def _where(rule: dict, i: int) -> str:
    return f"alert {rule['alert']} (rule {i})" if "alert" in rule else f"record {rule.get('record')}"


def check_rule_file(path: Path = rules.RULES_FILE, root: Path = ROOT) -> list[Problem]:
    """promtool's verdict, metric names, labels and runbooks of the rule file at `path`."""
    problems: list[Problem] = []
    proc = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        detail = [
            ln.strip() for ln in (proc.stdout + proc.stderr).splitlines() if ":" in ln and "FAILED" not in ln
        ]
        problems.append(Problem(str(path), "promtool check rules failed: " + "; ".join(detail)))
    try:
        items = load_rules(path)
    except yaml.YAMLError as e:
        return problems + [Problem(str(path), f"not YAML: {e}")]
    recorded = [r["record"] for r in items if "record" in r]
    exprs = {_where(r, i): str(r.get("expr", "")) for i, r in enumerate(items)}
    problems += check_expressions(exprs, recorded)
    for i, r in enumerate(items):
        if "alert" not in r:
            continue
        where, ann = _where(r, i), r.get("annotations") or {}
        if not (r.get("labels") or {}).get("severity"):
            problems.append(Problem(where, "no severity label"))
        if not ann.get("summary"):
            problems.append(Problem(where, "no summary annotation"))
        url = ann.get("runbook_url", "")
        if url != rules.runbook(r["alert"]):
            problems.append(Problem(where, f"runbook_url {url!r} is not {rules.runbook(r['alert'])!r}"))
        elif not (root / url).is_file():
            problems.append(Problem(where, f"runbook {url} does not exist"))
    return problems


def run_rule_tests(paths: Iterable[Path] = RULE_TESTS) -> tuple[bool, str]:
    """`promtool test rules` on `paths`: (all passed, promtool's output)."""
    proc = subprocess.run([promtool(), "test", "rules", *map(str, paths)], capture_output=True, text=True)
    return proc.returncode == 0, (proc.stdout + proc.stderr).strip()


def coverage(rule_path: Path = rules.RULES_FILE, tests: Iterable[Path] = RULE_TESTS) -> list[Problem]:
    """Alerts not tested both firing (`exp_alerts` given) and silent (no `exp_alerts`) by the promtool tests."""
    alerts = {r["alert"] for r in load_rules(rule_path) if "alert" in r}
    fired, silent = set(), set()
    for path in tests:
        for test in (yaml.safe_load(path.read_text("utf-8")) or {}).get("tests", []):
            for case in test.get("alert_rule_test", []):
                (fired if case.get("exp_alerts") else silent).add(case["alertname"])
    problems = [Problem(a, "no promtool test where it fires") for a in sorted(alerts - fired)]
    problems += [Problem(a, "no promtool test where it stays silent") for a in sorted(alerts - silent)]
    return problems


def count_tests(tests: Iterable[Path] = RULE_TESTS) -> tuple[int, int]:
    """(test groups, alert/expression assertions) in the promtool test files."""
    groups = cases = 0
    for path in tests:
        for test in (yaml.safe_load(path.read_text("utf-8")) or {}).get("tests", []):
            groups += 1
            cases += len(test.get("alert_rule_test", [])) + len(test.get("promql_expr_test", []))
    return groups, cases


def main() -> int:
    failed = False

    def report(name: str, problems: list) -> None:
        nonlocal failed
        for p in problems:
            print(f"FAIL {name}: {p}", file=sys.stderr)
        failed |= bool(problems)

    if rules.main(["--check"]) != 0:
        failed = True
    if generate.main(["--check"]) != 0:
        failed = True
    items = load_rules(rules.RULES_FILE)
    report("rules", check_rule_file())
    n_alerts = len({r["alert"] for r in items if "alert" in r})
    n_records = sum("record" in r for r in items)
    print(
        f"rules: {len(items)} rules ({n_records} recording, {n_alerts} alerts), promtool check rules + names"
    )
    ok, out = run_rule_tests()
    if not ok:
        print(out, file=sys.stderr)
        failed = True
    groups, cases = count_tests()
    print(f"promtool test rules: {groups} tests, {cases} assertions: {'SUCCESS' if ok else 'FAILED'}")
    report("coverage", coverage())
    if dashboard_check.main([]) != 0:
        failed = True
    print("rules-check:", "FAILED" if failed else "OK")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
