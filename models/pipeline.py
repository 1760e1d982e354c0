"""Train -> export -> evaluate, for one model spec. Shared by `make models` and `make benchmarks`."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

PRETRAINED = Path(__file__).parent / "pretrained" / "ernie-tiny-cs"


@dataclass
class ModelSpec:
    name: str
    task: str  # classification | embedding
    train: Path
    dev: Path
    labels: Path | None = None
    init: Path | None = PRETRAINED
    options: dict = field(default_factory=dict)  # models.train flags, e.g. {"max_seq_len": 32, "epochs": 10}

    def train_argv(self, out: Path) -> list[str]:
        argv = ["--task", self.task, "--train", str(self.train), "--dev", str(self.dev), "--out", str(out)]
        if self.labels:
            argv += ["--labels", str(self.labels)]
        if self.init:
            argv += ["--init", str(self.init)]
        for key, value in self.options.items():
            argv += [f"--{key.replace('_', '-')}", str(value)]
        return argv


def build(spec: ModelSpec, runs: Path, repository: Path) -> dict:
    """Train the spec, export it as a new version, return its evaluation (with the floor) and timings."""
    from export.exporter import export_checkpoint
    from models.train import parse_args, train

    started = time.time()
    checkpoint = runs / spec.name
    train(parse_args(spec.train_argv(checkpoint)))
    trained = time.time()
    version = export_checkpoint(checkpoint, repository, spec.name)
    report = version.evaluation()
    report["seconds"] = {
        "train": round(trained - started, 1),
        "export_and_eval": round(time.time() - trained, 1),
    }
    return report


def summary_row(report: dict) -> dict:
    """The headline figures of an evaluation beside its floor."""
    if report["task"] == "classification":
        base = report["baseline"]
        return {
            "model": report["model"],
            "metric": "accuracy / macro_f1 / ece",
            "ernie": f"{report['accuracy']:.4f} / {report['macro_f1']:.4f} / {report['ece']:.4f}",
            "floor (tfidf+lr)": f"{base.get('accuracy', float('nan')):.4f} / {base.get('macro_f1', float('nan')):.4f}",
            "beats_floor": report["macro_f1"] > base.get("macro_f1", 0)
            and report["accuracy"] > base.get("accuracy", 0),
        }
    floors = report["baseline"]
    best = max(floors.values(), key=lambda b: b["mrr"])
    return {
        "model": report["model"],
        "metric": "R@1 / R@5 / R@10 / MRR",
        "ernie": f"{report['recall_at_1']:.4f} / {report['recall_at_5']:.4f} / {report['recall_at_10']:.4f} / {report['mrr']:.4f}",
        "floor (best of tfidf, bm25)": f"{best['recall_at_1']:.4f} / {best['recall_at_5']:.4f} / {best['recall_at_10']:.4f} / {best['mrr']:.4f} ({best['name']})",
        "beats_floor": report["mrr"] > best["mrr"] and report["recall_at_1"] > best["recall_at_1"],
    }


def print_summary(rows: list[dict]) -> None:
    for row in rows:
        print(json.dumps(row, ensure_ascii=False))
