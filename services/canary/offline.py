"""Offline gate: the candidate's `evaluation.json` against stable's, on the same labelled set.

`export/exporter.py` writes `<repo>/<model>/<version>/evaluation.json` from `models/evaluate.py`: `model`,
`version`, `task`, `data` (the labelled file), then for classifiers `n`, `accuracy`, `macro_f1`, `ece`,
`per_label` (with `support`), and for encoders `n_queries`, `kb_size`, `recall_at_1/5/10`, `mrr`.

The comparison is refused (`OfflineGateError`) unless both reports describe the same set: same task, same data
file, same size, same label supports, and, when the versions' `training.json` recorded that file's SHA-256 (it
does when the evaluation used the dev split), the same hash. A metric may drop by at most `max_drop`
(absolute; 0.02 = 2 points).
"""

from __future__ import annotations

import json
from pathlib import Path

from services.canary.analysis import GateResult, Status
from services.canary.policy import OfflineGate

DEFAULT_METRICS = {"classification": ["accuracy", "macro_f1"], "embedding": ["recall_at_1", "mrr"]}


class OfflineGateError(ValueError):
    """The evaluation reports are missing, unreadable, or not on the same labelled set."""


def load_report(version_dir: Path) -> dict:
    path = version_dir / "evaluation.json"
    try:
        return json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise OfflineGateError(f"{path} not found: was the version exported with python -m export?") from None
    except (OSError, ValueError) as e:
        raise OfflineGateError(f"{path}: unreadable evaluation report ({e})") from e


def _dev_sha(version_dir: Path, data: str) -> str | None:
    """SHA-256 of the evaluation file if training.json recorded it (it records the train and dev splits)."""
    try:
        meta = json.loads((version_dir / "training.json").read_text("utf-8"))
    except (OSError, ValueError):
        return None
    for split in ("dev", "train"):
        rec = meta.get(split) or {}
        if isinstance(rec, dict) and rec.get("path") == data and rec.get("sha256"):
            return rec["sha256"]
    return None


def same_set_problems(
    stable: dict, canary: dict, stable_dir: Path | None = None, canary_dir: Path | None = None
):
    """Why two reports are not comparable (empty list: they are)."""
    problems = []
    for key in ("task", "data", "n", "n_queries", "kb_size"):
        if stable.get(key) != canary.get(key):
            problems.append(f"{key} differs: stable {stable.get(key)!r}, canary {canary.get(key)!r}")
    supports = [
        {label: m.get("support") for label, m in (r.get("per_label") or {}).items()} for r in (stable, canary)
    ]
    if supports[0] != supports[1]:
        problems.append(f"label supports differ: stable {supports[0]}, canary {supports[1]}")
    if stable_dir is not None and canary_dir is not None and stable.get("data") == canary.get("data"):
        sha_s, sha_c = _dev_sha(stable_dir, stable["data"]), _dev_sha(canary_dir, canary["data"])
        if sha_s and sha_c and sha_s != sha_c:
            problems.append(
                f"the file {stable['data']} had different contents (sha256 {sha_s[:12]} vs {sha_c[:12]})"
            )
    return problems


def offline_gate(stable_dir: Path, canary_dir: Path, cfg: OfflineGate) -> GateResult:
    """Compare `canary_dir`'s evaluation with `stable_dir`'s; raises OfflineGateError if not comparable."""
    stable, canary = load_report(stable_dir), load_report(canary_dir)
    problems = same_set_problems(stable, canary, stable_dir, canary_dir)
    if problems:
        raise OfflineGateError(
            f"refusing to compare {canary_dir} with {stable_dir}: not the same labelled set: "
            + "; ".join(problems)
        )
    metrics = cfg.metrics or DEFAULT_METRICS.get(stable.get("task"), [])
    if not metrics:
        raise OfflineGateError(f"no default metrics for task {stable.get('task')!r}: set offline.metrics")
    observed: dict[str, float | None] = {}
    drops = {}
    for m in metrics:
        if not isinstance(stable.get(m), int | float) or not isinstance(canary.get(m), int | float):
            raise OfflineGateError(
                f"metric {m!r} missing from an evaluation report ({stable_dir}, {canary_dir})"
            )
        observed[f"canary_{m}"], observed[f"stable_{m}"] = float(canary[m]), float(stable[m])
        drops[m] = float(stable[m]) - float(canary[m])
    threshold = f"each of {', '.join(metrics)} drops <= {cfg.max_drop:g}"
    summary = ", ".join(f"{m} {canary[m]:.4f} vs {stable[m]:.4f}" for m in metrics)
    worst = {m: d for m, d in drops.items() if d > cfg.max_drop + 1e-12}
    n = stable.get("n", stable.get("n_queries"))
    where = f"on {Path(str(stable.get('data'))).name} (n={n})"
    if not worst:
        return GateResult("offline_eval", Status.PASS, observed, threshold, f"{summary} {where}")
    failures = "; ".join(
        f"{m} dropped {d:.4f}, {d - cfg.max_drop:.4f} more than allowed" for m, d in worst.items()
    )
    return GateResult(
        "offline_eval",
        Status.FAIL,
        observed,
        threshold,
        f"{failures} ({summary} {where}, max drop {cfg.max_drop:g})",
    )
