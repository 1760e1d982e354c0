"""Chart checks without a helm binary or a cluster: lint, render every scenario, validate, checkov, k8s/ drift.

    python helm/ci/check.py                      lint + render + validate every helm/ci/*.yaml, check k8s/ drift
    python helm/ci/check.py --checkov BIN        ... and run checkov (BIN = .tools/checkov/bin/checkov)
    python helm/ci/check.py --write-k8s          re-render k8s/ from helm/ci/production.yaml (`make k8s`)

Tools (all pinned in pyproject.toml / the Makefile):
- helm-python-sdk (import `helm_python`): Helm v4's Go SDK through a C ABI. `Chart.render` renders offline and
  validates the values against values.schema.json first; `lint` is `helm lint --strict`.
- kubernetes-validate: every rendered object against the strict (no unknown fields) OpenAPI schemas of the
  Kubernetes versions in KUBE_VERSIONS. Prometheus Operator objects (ServiceMonitor, PrometheusRule) have no
  schema there; they are checked against CRD_SCHEMAS below, a hand-written subset of the fields we emit.
- checkov (own venv, it conflicts with the dev set): `--framework kubernetes` on the rendered output, with the
  skips of helm/ci/checkov-skips.yaml (each with its reason).

Milvus: the dependency is declared in Chart.yaml but cannot be downloaded here, so every scenario renders with
milvus.enabled=false; lint's "missing dependencies: milvus" warning is the one finding tolerated (LINT_TOLERATED).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

CI = Path(__file__).resolve().parent
CHART = CI.parent
ROOT = CHART.parent
K8S = ROOT / "k8s"
PRODUCTION = CI / "production.yaml"
SKIPS = CI / "checkov-skips.yaml"
RELEASE, NAMESPACE = "kefu", "kefu"
KUBE_VERSIONS = ("1.33.0", kubernetes_validate.latest_version())
LINT_KUBE_VERSION = "v1.33.0"
LINT_TOLERATED = ("chart directory is missing these dependencies: milvus",)
K8S_HEADER = (
    "# Rendered from helm/ by `make k8s` (release {release}, namespace {namespace}, values helm/ci/production.yaml)."
    "\n# Do not edit: change the chart or the profile and re-render; tests/test_chart.py fails on drift.\n"
)

_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
_META = {
    "type": "object",
    "required": ["name", "namespace", "labels"],
    "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}, "labels": _LABELS},
}
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "metadata": _META,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["selector", "endpoints"],
                "properties": {
                    "selector": {"type": "object", "required": ["matchLabels"]},
                    "namespaceSelector": {"type": "object"},
                    "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                    "endpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["port"],
                            "properties": {
                                "port": {"type": "string"},
                                "path": {"type": "string"},
                                "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                                "scrapeTimeout": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            },
                        },
                    },
                },
            },
        },
    },
    ("monitoring.coreos.com/v1", "PrometheusRule"): {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "metadata": _META,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["groups"],
                "properties": {
                    "groups": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["name", "rules"],
                            "properties": {
                                "name": {"type": "string"},
                                "interval": {"type": "string"},
                                "rules": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "additionalProperties": False,
                                        "required": ["expr"],
                                        "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                                        "properties": {
                                            "alert": {"type": "string"},
                                            "record": {"type": "string"},
                                            "expr": {"type": ["string", "integer"]},
                                            "for": {"type": "string"},
                                            "keep_firing_for": {"type": "string"},
                                            "labels": _LABELS,
                                            "annotations": _LABELS,
                                        },
                                    },
                                },
                            },
                        },
                    }
                },
            },
        },
    },
    # Argo Rollouts (canary.argo.enabled): the fields the chart emits; a Job metric's spec is a batch/v1 JobSpec
    # (tests/test_chart_canary.py validates it with kubernetes-validate).
    ("argoproj.io/v1alpha1", "AnalysisTemplate"): {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "metadata": _META,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["metrics"],
                "properties": {
                    "args": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["name"],
                            "properties": {"name": {"type": "string"}, "value": {"type": "string"}},
                        },
                    },
                    "metrics": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["name", "provider"],
                            "properties": {
                                "name": {"type": "string", "pattern": "^[a-z0-9-]+$"},
                                "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                                "count": {"type": "integer", "minimum": 1},
                                "failureLimit": {"type": "integer", "minimum": 0},
                                "successCondition": {"type": "string"},
                                "provider": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "minProperties": 1,
                                    "maxProperties": 1,
                                    "properties": {
                                        "prometheus": {
                                            "type": "object",
                                            "additionalProperties": False,
                                            "required": ["address", "query"],
                                            "properties": {
                                                "address": {"type": "string"},
                                                "query": {"type": "string"},
                                            },
                                        },
                                        "job": {
                                            "type": "object",
                                            "additionalProperties": False,
                                            "required": ["spec"],
                                            "properties": {"spec": {"type": "object"}},
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (dashboards, rules, policy) as literal blocks, so k8s/ diffs stay readable."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump(obj: object) -> str:
    return yaml.dump(obj, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=110)


class CheckError(Exception):
    """A chart check failed; the message names the scenario and what is wrong."""


@dataclass
class Rendered:
    """One scenario's rendered objects, by template path."""

    scenario: str
    objects: list[tuple[str, dict]] = field(default_factory=list)
    notes: str = ""


def scenarios() -> dict[str, Path]:
    return {p.stem: p for p in sorted(CI.glob("*.yaml")) if p != SKIPS}


def load_values(path: Path) -> dict:
    return yaml.safe_load(path.read_text("utf-8")) or {}


def render(values: dict, scenario: str = "values") -> Rendered:
    """Render the chart offline (schema-validated first by the SDK); HelmError subclasses propagate."""
    import helm_python

    with helm_python.Chart.load(CHART) as chart:
        manifests = chart.render(values=values, name=RELEASE, namespace=NAMESPACE)
    out = Rendered(scenario)
    for template, text in sorted(manifests.items()):
        if template.endswith("NOTES.txt"):
            out.notes = text
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                out.objects.append((template, doc))
    return out


def lint(values: dict, scenario: str) -> list[str]:
    """`helm lint --strict` findings other than the tolerated ones (info messages are not findings)."""
    import helm_python

    report = helm_python.lint(CHART, values, strict=True, kube_version=LINT_KUBE_VERSION, namespace=NAMESPACE)
    problems = [
        f"{scenario}: lint {m['path']}: {m['error']}"
        for m in report["messages"]
        if m["severity"] >= 2 and not any(t in m["error"] for t in LINT_TOLERATED)
    ]
    problems += [
        f"{scenario}: lint: {e}" for e in report.get("errors", []) if not any(t in e for t in LINT_TOLERATED)
    ]
    return sorted(set(problems))


def validate(rendered: Rendered) -> tuple[int, int]:
    """Validate every object; returns (objects checked by kubernetes-validate, objects checked as CRDs)."""
    native = crds = 0
    for template, obj in rendered.objects:
        where = f"{rendered.scenario}: {template}: {obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        schema = CRD_SCHEMAS.get((obj.get("apiVersion"), obj.get("kind")))
        if schema is not None:
            try:
                jsonschema.validate(obj, schema)
            except jsonschema.ValidationError as e:
                raise CheckError(f"{where}: {e.message} at {'/'.join(map(str, e.absolute_path))}") from None
            crds += 1
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                raise CheckError(f"{where}: Kubernetes {version}: {e.message} at {e.path}") from None
            except kubernetes_validate.SchemaNotFoundError as e:
                raise CheckError(f"{where}: no schema in Kubernetes {version}: {e}") from None
        native += 1
    return native, crds


def k8s_files(rendered: Rendered) -> dict[str, str]:
    """k8s/ as it should be: one file per object, <component>/<kind>-<name>.yaml, plus a kustomization."""
    header = K8S_HEADER.format(release=RELEASE, namespace=NAMESPACE)
    files: dict[str, str] = {}
    for _template, obj in rendered.objects:
        component = obj["metadata"].get("labels", {}).get("app.kubernetes.io/component", "other")
        rel = f"{component}/{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"
        if rel in files:
            raise CheckError(f"production: two objects would be written to k8s/{rel}")
        files[rel] = header + dump(obj)
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": sorted(files),
    }
    files["kustomization.yaml"] = header + dump(kustomization)
    return files


def k8s_drift(expected: dict[str, str]) -> list[str]:
    """Differences between k8s/ and a fresh render (README.md is the only hand-written file there)."""
    present = {str(p.relative_to(K8S)): p.read_text("utf-8") for p in K8S.rglob("*.yaml") if p.is_file()}
    problems = [f"k8s/{f} is missing" for f in sorted(set(expected) - set(present))]
    problems += [
        f"k8s/{f} is not rendered from the chart any more" for f in sorted(set(present) - set(expected))
    ]
    problems += [
        f"k8s/{f} differs from the chart"
        for f in sorted(set(expected) & set(present))
        if expected[f] != present[f]
    ]
    return problems


def write_k8s(expected: dict[str, str]) -> None:
    for p in K8S.rglob("*.yaml"):
        p.unlink()
    for d in sorted((p for p in K8S.iterdir() if p.is_dir()), reverse=True):
        shutil.rmtree(d)
    for rel, text in expected.items():
        (K8S / rel).parent.mkdir(parents=True, exist_ok=True)
        (K8S / rel).write_text(text, "utf-8")


def checkov_skips() -> list[dict]:
    skips = yaml.safe_load(SKIPS.read_text("utf-8"))["skips"]
    for s in skips:
        if not s.get("reason"):
            raise CheckError(f"{SKIPS.name}: {s.get('id')} has no reason")
    return skips


def run_checkov(binary: str, directory: Path) -> dict:
    """checkov on every rendered scenario; returns its summary (passed, failed, skipped, ...)."""
    skips = ",".join(s["id"] for s in checkov_skips())
    cmd = [binary, "--skip-download", "-d", str(directory), "--framework", "kubernetes", "-o", "json",
           "--skip-check", skips, "--compact", "--quiet"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise CheckError(f"checkov gave no JSON (exit {proc.returncode}): {proc.stderr[-2000:]}") from None
    report = report[0] if isinstance(report, list) else report
    failed = report.get("results", {}).get("failed_checks", [])
    if failed:
        lines = [f"{c['check_id']} {c['check_name']}: {c['file_path']} {c['resource']}" for c in failed]
        raise CheckError("checkov failed:\n  " + "\n  ".join(lines))
    return report["summary"]


def values_table() -> str:
    """The README's values table, from values.yaml's `##` comments (workers.sentiment/faq repeat intent)."""
    lines = (CHART / "values.yaml").read_text("utf-8").splitlines()
    defaults = yaml.safe_load("\n".join(lines))
    rows, stack, comment = [], [], []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("##"):
            comment.append(stripped.lstrip("#").strip())
            continue
        m = re.match(r"^(\s*)([A-Za-z0-9_.\-/]+):", line)
        if not m:
            comment = []
            continue
        depth = len(m.group(1)) // 2
        stack[depth:] = [m.group(2)]
        path = ".".join(stack)
        if not path.startswith(("workers.sentiment", "workers.faq")):
            value = defaults
            for key in stack:
                value = value[key]
            inline = line.split(":", 1)[1].strip()
            shown = f"`{json.dumps(value, ensure_ascii=False)}`" if inline else ""
            meaning = " ".join(comment).replace("|", "\\|")
            rows.append(f"| `{path}` | {shown} | {meaning} |")
        comment = []
    return "| key | default | meaning |\n|---|---|---|\n" + "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="helm/ci/check.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkov", metavar="BIN", help="run this checkov binary on the rendered output")
    p.add_argument("--write-k8s", action="store_true", help="re-render k8s/ from helm/ci/production.yaml")
    p.add_argument("--values-table", action="store_true", help="print the README's values table and exit")
    p.add_argument("--out", type=Path, help="keep the rendered scenarios here (default: a temporary folder)")
    args = p.parse_args(argv)
    if args.values_table:
        print(values_table(), end="")
        return 0
    started = time.monotonic()
    out = args.out or Path(tempfile.mkdtemp(prefix="kefu-chart-"))
    problems: list[str] = []
    totals = {"scenarios": 0, "objects": 0, "kubernetes_validate": 0, "crd": 0}
    production = None
    for name, path in scenarios().items():
        values = load_values(path)
        problems += lint(values, name)
        try:
            rendered = render(values, name)
            native, crds = validate(rendered)
        except Exception as e:  # noqa: BLE001 - report every scenario, then fail
            problems.append(f"{name}: {type(e).__name__}: {e}")
            continue
        (out / name).mkdir(parents=True, exist_ok=True)
        docs = [obj for _, obj in rendered.objects]
        (out / name / "manifests.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False), "utf-8")
        totals["scenarios"] += 1
        totals["objects"] += len(docs)
        totals["kubernetes_validate"] += native
        totals["crd"] += crds
        print(
            f"  {name:16s} {len(docs):3d} objects ({native} kubernetes-validate x{len(KUBE_VERSIONS)}, {crds} CRD)"
        )
        if path == PRODUCTION:
            production = rendered
    if production is None:
        problems.append("production: the reference profile did not render")
    else:
        expected = k8s_files(production)
        if args.write_k8s:
            write_k8s(expected)
            print(f"  wrote {len(expected)} files to k8s/")
        problems += k8s_drift(expected)
    print(
        f"chart: {totals['scenarios']} scenarios rendered, {totals['objects']} objects, "
        f"{totals['kubernetes_validate']} validated strictly against Kubernetes {' and '.join(KUBE_VERSIONS)}, "
        f"{totals['crd']} Prometheus Operator objects against CRD_SCHEMAS"
    )
    if args.checkov and not problems:
        try:
            summary = run_checkov(args.checkov, out)
            skipped = ", ".join(s["id"] for s in checkov_skips())
            print(
                f"checkov: {summary['passed']} passed, {summary['failed']} failed, {summary['skipped']} skipped inline; "
                f"not run (--skip-check, reasons in helm/ci/checkov-skips.yaml): {skipped}; "
                f"{summary.get('resource_count')} resources"
            )
        except CheckError as e:
            problems.append(str(e))
    if args.out:
        print(f"chart checks took {time.monotonic() - started:.1f} s; rendered output in {out}")
    else:
        shutil.rmtree(out, ignore_errors=True)
        print(f"chart checks took {time.monotonic() - started:.1f} s")
    for problem in problems:
        print("FAIL", problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
