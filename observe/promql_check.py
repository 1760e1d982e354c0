"""Checks shared by the dashboard and alert checks: PromQL parses, and uses only metric names that exist.

Parsing is Prometheus's own: every expression becomes a recording rule in a temporary rule file that
`promtool check rules` reads (the Debian `prometheus` 2.42 server has no `/api/v1/parse_query`). promtool
reports each failure with its rule name, which maps back to the panel or alert it came from.

Metric names: once promtool has accepted an expression, a small lexer walks its tokens and keeps the
identifiers in selector position (not functions, aggregations, keywords, grouping labels, label names inside
`{}` or durations inside `[]`; `{__name__="..."}` counts). Allowed are:

- what the services export: `METRIC_NAMES` of `services/gateway/metrics.py` and `services/worker/metrics.py`,
  with the sample names of each family (`_bucket`, `_sum`, `_count` for histograms) read from the real
  prometheus_client registries, so a histogram's `_bucket` passes and a gauge's `_bucket` does not;
- `EXTERNAL`: the NVIDIA DCGM exporter's GPU metrics, used where the GPU worker runs beside it;
- `BUILTIN`: series Prometheus writes itself (`up`, `ALERTS`, scrape metadata);
- the recording rules defined in the rule file (passed in by the caller).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry

from services.gateway.metrics import METRIC_NAMES as GATEWAY_METRIC_NAMES
from services.gateway.metrics import GatewayMetrics
from services.worker.metrics import METRIC_NAMES as WORKER_METRIC_NAMES
from services.worker.metrics import WorkerMetrics

# NVIDIA dcgm-exporter (GPU worker pools): utilisation in percent, framebuffer memory in MiB.
EXTERNAL = frozenset({"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE"})
# Written by Prometheus itself for every target / alert.
BUILTIN = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped", "ALERTS", "ALERTS_FOR_STATE"})

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless"}
_KEYWORDS |= {"offset", "inf", "nan", "start", "end", "atan2"}
_AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk"}
_AGGREGATIONS |= {"topk", "quantile"}
_GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_TOKEN = re.compile(
    r"""(?P<str>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)"""
    r"|(?P<num>\d[\w.]*)"
    r"|(?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)"
    r"|(?P<ws>\s+)"
    r"|(?P<punct>=~|!~|!=|==|<=|>=|.)",
    re.S,
)


class PromQLCheckError(Exception):
    """One or more expressions failed: `problems` holds one line per failure, naming where it came from."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True)
class Problem:
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def promtool() -> str:
    """Path of `promtool` (Debian package `prometheus`), or $PROMTOOL; a clear error when missing."""
    path = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if not path:
        raise FileNotFoundError("promtool not found: apt-get install prometheus (or set PROMTOOL)")
    return path


def exported_sample_names() -> frozenset[str]:
    """Every sample name the gateway and workers expose, from METRIC_NAMES and their families' types."""
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("", "_bucket", "_sum", "_count")}
    names: set[str] = set()
    for contract, build in ((GATEWAY_METRIC_NAMES, GatewayMetrics), (WORKER_METRIC_NAMES, WorkerMetrics)):
        registry = CollectorRegistry()
        build(registry)
        exported = {
            f"{family.name}{suffix}": family.type
            for family in registry.collect()
            for suffix in suffixes.get(family.type, ("",))
        }
        for name in contract:
            if name not in exported:
                raise LookupError(f"{name} is in METRIC_NAMES but {build.__name__} does not export it")
            names.add(name)
            if exported[name] == "histogram":
                names.update(f"{name}{s}" for s in ("_bucket", "_sum", "_count"))
    return frozenset(names)


def allowed_names(recorded: Iterable[str] = ()) -> frozenset[str]:
    """Exported + external + built-in names, plus the recording rules `recorded`."""
    return exported_sample_names() | EXTERNAL | BUILTIN | frozenset(recorded)


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (call only on an expression promtool accepted)."""
    tokens = [
        (m.lastgroup, m.group())
        for m in _TOKEN.finditer(expr)
        if m.lastgroup != "ws" and not (m.lastgroup == "punct" and m.group() == "\n")
    ]
    names: set[str] = set()
    brace = bracket = 0
    skip_list = False  # inside the label list of by/without/on/ignoring/group_*
    for i, (kind, text) in enumerate(tokens):
        nxt = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if kind == "punct":
            if text == "{":
                brace += 1
            elif text == "}":
                brace -= 1
            elif text == "[":
                bracket += 1
            elif text == "]":
                bracket -= 1
            elif text == ")" and skip_list:
                skip_list = False
            continue
        if kind == "str" and brace and i >= 2 and tokens[i - 2][1] == "__name__" and tokens[i - 1][1] == "=":
            names.add(text[1:-1])
            continue
        if kind != "ident" or brace or bracket or skip_list:
            continue
        if text.lower() in _GROUPING and nxt == "(":
            skip_list = True
            continue
        if text.lower() in _KEYWORDS or nxt == "(":
            continue
        if text.lower() in _AGGREGATIONS and nxt.lower() in ("by", "without"):
            continue
        names.add(text)
    return names


def parse_errors(expressions: Mapping[str, str]) -> list[Problem]:
    """promtool's verdict on each expression (keyed by where it came from); an empty list when all parse."""
    keys = list(expressions)
    rules = [{"record": f"check:expr_{i}", "expr": expressions[k]} for i, k in enumerate(keys)]
    with tempfile.TemporaryDirectory(prefix="promql-check-") as tmp:
        path = Path(tmp) / "exprs.yaml"
        path.write_text(yaml.safe_dump({"groups": [{"name": "check", "rules": rules}]}, allow_unicode=True))
        proc = subprocess.run(
            [promtool(), "check", "rules", "--lint=none", str(path)], capture_output=True, text=True
        )
    out = proc.stdout + proc.stderr
    problems = []
    for line in out.splitlines():
        m = re.search(r'"check:expr_(\d+)": (.*)$', line)
        if m:
            problems.append(Problem(keys[int(m.group(1))], f"PromQL does not parse: {m.group(2)}"))
    if proc.returncode != 0 and not problems:
        problems.append(Problem("promtool", out.strip() or f"exit status {proc.returncode}"))
    return problems


def check_expressions(expressions: Mapping[str, str], recorded: Iterable[str] = ()) -> list[Problem]:
    """Every problem of `expressions`: PromQL that does not parse, or a metric name nothing exports."""
    problems = parse_errors(expressions)
    broken = {p.where for p in problems}
    allowed = allowed_names(recorded)
    for where, expr in expressions.items():
        if where in broken:
            continue
        unknown = sorted(metric_names(expr) - allowed)
        if unknown:
            problems.append(
                Problem(
                    where,
                    f"unknown metric name(s) {', '.join(unknown)}: not in the services' METRIC_NAMES, "
                    "the external whitelist, Prometheus built-ins or the recording rules",
                )
            )
    return problems


def raise_on(problems: list[Problem]) -> None:
    """Raise PromQLCheckError listing `problems`, if any."""
    if problems:
        raise PromQLCheckError([str(p) for p in problems])
