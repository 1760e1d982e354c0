"""`make benchmarks DATA=../shared/data`: one model per benchmark dataset, trained on its train split (dev for
early stopping and calibration), exported to benchmark_repository/<dataset>/, dev reports printed with the
TF-IDF / BM25 floor beside them. Under an hour on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from models.pipeline import ModelSpec, build, print_summary, summary_row

# name -> (task, models.train options). Fixed in advance, not tuned on dev: the classifiers take the levers the
# default models measured (README "Default models"): a wide branch (hashed char 1-3-grams inside the exported graph,
# intent-sized 2^15 rows at lr x 100 for short queries, review-sized 2^17 rows for reviews) and class-balanced loss.
INTENT_WIDE = {"wide_buckets": 1 << 15, "wide_lr_scale": 100, "class_weights": "balanced"}
REVIEW_WIDE = {"wide_buckets": 1 << 17, "class_weights": "balanced"}
BENCHMARKS = {
    "nlpcc2018_task4_slu": ("classification", {"max_seq_len": 32, "epochs": 6, "lr": 3e-4, **INTENT_WIDE}),
    "smp2017_ecdt_task1": (
        "classification",
        {"max_seq_len": 32, "epochs": 20, "lr": 3e-4, "patience": 5, **INTENT_WIDE},
    ),
    "online_shopping_10_cats": (
        "classification",
        {"max_seq_len": 128, "epochs": 2, "eval_every": 500, "lr": 3e-4, **REVIEW_WIDE},
    ),
    "waimai_10k": ("classification", {"max_seq_len": 96, "epochs": 5, "lr": 3e-4, **REVIEW_WIDE}),
    "atec_nlp_sim": ("embedding", {"max_seq_len": 48, "epochs": 10, "batch_size": 64, "lr": 3e-4}),
    "bq_corpus": ("embedding", {"max_seq_len": 48, "epochs": 15, "batch_size": 64, "lr": 3e-4}),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.benchmarks", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="the shared datasets folder")
    p.add_argument("--repository", type=Path, default=Path("benchmark_repository"))
    p.add_argument("--runs", type=Path, default=Path("runs/benchmarks"))
    p.add_argument("--only", action="append", choices=sorted(BENCHMARKS), help="run only these (repeatable)")
    p.add_argument("--results", type=Path, default=Path("bench/results"))
    args = p.parse_args(argv)
    started, rows, reports = time.time(), [], {}
    for dataset, (task, options) in BENCHMARKS.items():
        if args.only and dataset not in args.only:
            continue
        folder = args.data / dataset
        print(f"== {dataset} ({task})", file=sys.stderr, flush=True)
        spec = ModelSpec(dataset, task, folder / "train.jsonl", folder / "dev.jsonl", options=options)
        report = build(spec, args.runs, args.repository)  # -> <repository>/<dataset>/<version>/
        reports[dataset] = report
        print(
            json.dumps({k: v for k, v in report.items() if k != "per_label"}, ensure_ascii=False, indent=2),
            flush=True,
        )
        rows.append({"dataset": dataset, **summary_row(report)})
    print(f"== benchmarks finished in {time.time() - started:.0f} s")
    print_summary(rows)
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"models-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(
        json.dumps({"rows": rows, "reports": reports}, ensure_ascii=False, indent=2) + "\n", "utf-8"
    )
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
