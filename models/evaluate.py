"""Evaluate an exported model version on a labelled file, beside its TF-IDF / BM25 floor.

    python -m models.evaluate --model model_repository/intent/1 --data dev.jsonl

Prints one JSON object. Classification: accuracy, macro_f1, ece, per_label; retrieval (FAQ encoder):
recall_at_1/5/10 and mrr, with the knowledge base = distinct text_a of the positive pairs and the queries their
text_b. The model runs through Paddle Inference exactly as served. `--model` takes a version folder, or a
model folder (its newest serving version).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from models.baselines import bm25_retrieval, tfidf_logreg, tfidf_retrieval
from models.corpus import load_classification
from models.metrics import classification_report, retrieval_report
from services.faq.records import (
    DataError,
    load_pairs,
    open_version,  # also re-exported: `models.evaluate.open_version`
    retrieval_split,
)
from services.runtime.repository import ModelVersion, RepositoryError, Task
from services.runtime.runner import PaddleRunner, RunnerSettings


def predict(runner: PaddleRunner, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """One output row per text, in order, batching length-sorted texts as a server would."""
    version = runner.version
    tokenizer = version.tokenizer()
    ids = tokenizer.encode_ids(texts)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out: list = [None] * len(ids)
    output_name = version.config.outputs[0].name
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        result = runner.run(tokenizer.pad([ids[i] for i in chunk]))[output_name]
        for row, i in zip(result, chunk, strict=True):
            out[i] = row
    return np.stack(out)


def evaluate(
    version: ModelVersion, data: Path, baseline_train: Path | None = None, baseline: bool = True
) -> dict:
    runner = PaddleRunner(version, RunnerSettings(cpu_threads=2))
    head = {
        "model": version.name,
        "version": version.version,
        "task": version.config.task.value,
        "data": str(data),
    }
    if version.config.task == Task.CLASSIFICATION:
        examples = load_classification(data, version.labels)
        index = {label: i for i, label in enumerate(version.labels)}
        y = np.array([index[e.label] for e in examples])
        texts = [e.text for e in examples]
        report = {**head, **classification_report(predict(runner, texts), y, version.labels)}
        if baseline:
            report["baseline"] = _classification_floor(version, texts, y, baseline_train)
        return report
    kb, queries, gold = retrieval_split(load_pairs(data))
    kb_emb, q_emb = predict(runner, kb), predict(runner, queries)
    report = {**head, **retrieval_report(q_emb @ kb_emb.T, gold)}
    if baseline:
        report["baseline"] = {
            "tfidf": tfidf_retrieval(kb, queries, gold),
            "bm25": bm25_retrieval(kb, queries, gold),
        }
    return report


def _classification_floor(version: ModelVersion, texts, y, baseline_train: Path | None) -> dict:
    """TF-IDF + LR fitted on the version's own training file (recorded in training.json), or --baseline-train."""
    if baseline_train is None:
        recorded = json.loads((version.path / "training.json").read_text("utf-8"))["train"]
        baseline_train = Path(recorded["path"])
        if not baseline_train.is_file():
            return {"skipped": f"training file {baseline_train} not found; pass --baseline-train"}
    train = load_classification(baseline_train, version.labels)
    index = {label: i for i, label in enumerate(version.labels)}
    return tfidf_logreg(
        [e.text for e in train], np.array([index[e.label] for e in train]), texts, y, version.labels
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, type=Path, help="exported version folder (or model folder)")
    p.add_argument("--data", required=True, type=Path, help="labelled .jsonl/.csv file")
    p.add_argument(
        "--baseline-train", type=Path, help="training file for the TF-IDF floor (default: the recorded one)"
    )
    p.add_argument("--no-baseline", action="store_true")
    args = p.parse_args(argv)
    try:
        report = evaluate(open_version(args.model), args.data, args.baseline_train, not args.no_baseline)
    except (DataError, RepositoryError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report, ensure_ascii=False, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
