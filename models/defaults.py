"""`make models`: train, evaluate and export the default model set (intent, sentiment, faq).

    python -m models.defaults --repository model_repository [--only intent]

Trains from the data shipped in data/ (see data/README.md), initialised from the committed MLM-pretrained
checkpoint models/pretrained/ernie-tiny-cs. About 15-20 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from models.pipeline import ModelSpec, build, print_summary, summary_row

DATA = Path(__file__).resolve().parent.parent / "data"

DEFAULTS = [
    ModelSpec(
        "intent",
        "classification",
        DATA / "intent" / "train.jsonl",
        DATA / "intent_cs_demo" / "dev.jsonl",
        labels=DATA / "intent_cs_demo" / "labels.txt",
        options={
            "max_seq_len": 32,
            "epochs": 20,
            "lr": 3e-4,
            "patience": 5,
            "wide_buckets": 1 << 15,
            "wide_lr_scale": 100,
            "class_weights": "balanced",
        },
    ),
    ModelSpec(
        "sentiment",
        "classification",
        DATA / "sentiment" / "train.jsonl",
        DATA / "sentiment" / "dev.jsonl",
        labels=DATA / "sentiment" / "labels.txt",
        options={
            "max_seq_len": 96,
            "epochs": 2,
            "max_steps": 2000,
            "eval_every": 500,
            "lr": 3e-4,
            "wide_buckets": 1 << 17,
            "class_weights": "balanced",
        },
    ),
    ModelSpec(
        "faq",
        "embedding",
        DATA / "faq_pairs" / "train.jsonl",
        DATA / "faq_pairs" / "dev.jsonl",
        options={
            "max_seq_len": 48,
            "epochs": 8,
            "batch_size": 64,
            "lr": 3e-4,
            "patience": 3,
            "hard_negatives": 5,  # the KB's BM25-mined label-0 rows (and ATEC's own) in the loss
        },
    ),
]


def calibrate_faq(model_dir: Path) -> dict:
    """The new encoder version's answer confidence and thresholds, as `make faq-thresholds` fits them: the demo
    KB's alternatives (folds left out, a real milvus-lite index) + held-out queries, with the served intent model
    beside it (the intent-agreement features), thresholds chosen on the labelled chat set (data/chat_eval)."""
    import tempfile
    from dataclasses import asdict

    from models.evaluate import open_version
    from services.faq.embedders import LocalEmbedder
    from services.faq.thresholds import calibrate, local_classifier, milvus_lite_store, write

    version = open_version(model_dir)
    classify, intent_model = None, None
    if (model_dir.parent / "intent" / "config.yaml").is_file():
        intent = open_version(model_dir.parent / "intent")
        classify, intent_model = local_classifier(intent), f"{intent.name}-v{intent.version}"
    with tempfile.TemporaryDirectory(prefix="kefu-thresholds-") as tmp:
        thresholds = calibrate(
            LocalEmbedder(version),
            DATA / "faq_kb_demo" / "faq.jsonl",
            DATA / "faq_kb_demo" / "queries_dev.jsonl",
            classify=classify,
            intent_model=intent_model,
            open_store=milvus_lite_store(Path(tmp)),
            tune_path=DATA / "chat_eval" / "chat_dev.jsonl",
        )
    write(version.model_dir, version.version, thresholds)
    return {"faq_thresholds": asdict(thresholds)}


def handoff_report(repository: Path) -> dict:
    """Hand-over figures of the sentiment (and intent) models on dev, with the proposed P(negative) threshold;
    written beside the sentiment model's config.yaml as handoff.json (`models.handoff_report` explains)."""
    from models.evaluate import open_version
    from models.handoff_report import main as report_main

    out = repository / "sentiment" / "handoff.json"
    argv = ["--sentiment", str(repository / "sentiment"), "--out", str(out)]
    if (repository / "intent" / "config.yaml").is_file():
        argv += ["--intent", str(repository / "intent")]
    report_main(argv)
    report = json.loads(out.read_text("utf-8"))
    report["versions"] = {
        name: open_version(repository / name).version
        for name in ("sentiment", "intent")
        if (repository / name / "config.yaml").is_file()
    }
    out.write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", "utf-8")
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.defaults", description=__doc__.split("\n\n")[0])
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    p.add_argument("--runs", type=Path, default=Path("runs/defaults"))
    p.add_argument("--only", action="append", help="build only these models (repeatable)")
    args = p.parse_args(argv)
    started, rows = time.time(), []
    for spec in DEFAULTS:
        if args.only and spec.name not in args.only:
            continue
        print(
            f"== {spec.name}: training on {spec.train.relative_to(DATA.parent)}", file=sys.stderr, flush=True
        )
        report = build(spec, args.runs, args.repository)
        print(json.dumps({k: v for k, v in report.items() if k != "per_label"}, ensure_ascii=False, indent=2))
        rows.append(summary_row(report))
        if spec.task == "embedding":
            print(json.dumps(calibrate_faq(args.repository / spec.name), ensure_ascii=False, indent=2))
    if not args.only or "sentiment" in args.only:
        print("== hand-over figures on dev (sentiment/handoff.json)", file=sys.stderr, flush=True)
        handoff_report(args.repository)
    print(f"== default models built in {time.time() - started:.0f} s into {args.repository}/")
    print_summary(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
