"""The dashboard check: every PromQL query of every dashboard parses (promtool) and uses only metric names the
services export (plus the recording rules, the DCGM whitelist and Prometheus built-ins).

    python -m grafana.check [dashboard.json ...]     # default: grafana/dashboards/*.json

Grafana's interval variables (`$__rate_interval`, `$__interval`, `$__range`) become `5m` before parsing; any
other `$variable` must sit inside a label-matcher string (`{model=~"$model"}`), where it is plain text: one
anywhere else makes the query fail to parse, as it would in Prometheus once Grafana substitutes a bad value.
Query variables (`label_values(<selector>, <label>)`) have their selector checked the same way.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable
from pathlib import Path

from observe.promql_check import Problem, check_expressions
from observe.rules import RULES_FILE, recorded_names

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_DIR = ROOT / "grafana" / "dashboards"
_INTERVALS = re.compile(r"\$\{?__(?:rate_interval|interval|range)(?::\w+)?\}?")
_LABEL_VALUES = re.compile(r"^\s*label_values\((?P<selector>.*),\s*(?P<label>[A-Za-z_]\w*)\s*\)\s*$", re.S)


def _panels(panels: list[dict]) -> Iterable[dict]:
    for p in panels:
        yield p
        yield from _panels(p.get("panels", []))


def expressions(board: dict, name: str = "") -> dict[str, str]:
    """Every PromQL expression of `board`, keyed by where it sits (dashboard / panel / refId)."""
    where = name or board.get("uid", "?")
    out: dict[str, str] = {}
    for panel in _panels(board.get("panels", [])):
        for target in panel.get("targets", []):
            expr = target.get("expr")
            if expr is None:
                continue
            key = f"{where} / panel {panel.get('title')!r} / {target.get('refId', '?')}"
            out[key] = _INTERVALS.sub("5m", expr)
    for var in board.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var.get("query")
        query = query.get("query", "") if isinstance(query, dict) else query or ""
        key = f"{where} / variable {var.get('name')!r}"
        m = _LABEL_VALUES.match(query)
        # label_values(<selector>, label) queries a selector; anything else must be plain PromQL.
        out[key] = _INTERVALS.sub("5m", m.group("selector") if m else query)
    return out


def check_dashboards(boards: dict[str, dict], recorded: Iterable[str] | None = None) -> list[Problem]:
    """All problems of the dashboards `boards` ({name: dashboard dict}); empty when every query is sound."""
    if recorded is None:
        recorded = recorded_names(RULES_FILE)
    exprs: dict[str, str] = {}
    problems: list[Problem] = []
    for name, board in boards.items():
        found = expressions(board, name)
        if not found:
            problems.append(Problem(name, "dashboard has no PromQL queries"))
        exprs.update(found)
    return problems + check_expressions(exprs, recorded)


def load(paths: Iterable[Path]) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text("utf-8")) for p in paths}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dashboards", nargs="*", type=Path)
    args = ap.parse_args(argv)
    paths = args.dashboards or sorted(DASHBOARD_DIR.glob("*.json"))
    boards = load(paths)
    problems = check_dashboards(boards)
    for p in problems:
        print(f"FAIL {p}", file=sys.stderr)
    n = sum(len(expressions(b, k)) for k, b in boards.items())
    print(f"dashboards: {len(boards)} checked, {n} queries, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
