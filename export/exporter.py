"""Export a trained checkpoint as a new version of a model in the repository.

    python -m export --checkpoint runs/intent --repository model_repository --name intent

1. Freeze the network with `paddle.jit.save` (dynamic batch and sequence dimensions) into a staging folder.
2. Add vocab, tokenizer settings, labels and the training record.
3. Check Paddle Inference against the eager training graph on real inputs of several batch sizes and
   lengths: max abs diff must stay below 1e-4, or nothing is written.
4. Evaluate the staged version through Paddle Inference on the dev file (evaluation.json).
5. Write the sha256 manifest, move the folder into place as `<repo>/<name>/<version>` (never over an existing
   version) and write / refresh `<repo>/<name>/config.yaml`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from services.runtime.repository import (
    CONFIG,
    ModelConfig,
    ModelRepository,
    ModelVersion,
    RepositoryError,
    Task,
    TensorSpec,
    write_manifest,
)

log = logging.getLogger(__name__)
PARITY_TOLERANCE = 1e-4
OUTPUT_NAMES = {Task.CLASSIFICATION: "probs", Task.EMBEDDING: "embedding"}


class ExportError(RepositoryError):
    """The checkpoint cannot be exported (parity failure, existing version, bad checkpoint)."""


def _config_for(name: str, meta: dict, max_batch_size: int, existing: ModelConfig | None) -> ModelConfig:
    task = Task(meta["task"])
    width = len(meta["labels"]) if task == Task.CLASSIFICATION else meta["embedding_dim"]
    config = ModelConfig(
        name=name,
        task=task,
        labels=meta["labels"],
        inputs=[TensorSpec(name="input_ids", datatype="INT64", dims=[-1, -1])],
        outputs=[TensorSpec(name=OUTPUT_NAMES[task], datatype="FP32", dims=[-1, width])],
        max_batch_size=max_batch_size,
        max_seq_len=meta["max_seq_len"],
        embedding_dim=meta["embedding_dim"],
    )
    if existing is not None:
        if existing.task != config.task:
            raise ExportError(
                f"model {name!r} is a {existing.task.value} model; checkpoint is {config.task.value}"
            )
        config.version_policy = existing.version_policy
    return config


def parity_inputs(tokenizer, texts: list[str]) -> list[np.ndarray]:
    """Batches of 1, 7 and up to 40 texts, short and long, padded as the server pads them."""
    by_len = sorted(set(texts), key=len)
    picks = by_len[:: max(1, len(by_len) // 48)][:48] or ["你好"]
    return [tokenizer(picks[-1:]), tokenizer(picks[:7]), tokenizer(picks[7:47] or picks)]


def export_checkpoint(
    checkpoint: Path,
    repository: Path,
    name: str,
    version: int | None = None,
    max_batch_size: int = 64,
    eval_data: Path | None = None,
) -> ModelVersion:
    import paddle
    from paddle.static import InputSpec

    from models.evaluate import evaluate
    from models.modeling import CalibratedClassifier, load_network
    from services.runtime.runner import PaddleRunner, RunnerSettings

    meta = json.loads((checkpoint / "training.json").read_text("utf-8"))
    task = Task(meta["task"])
    model_dir = repository / name
    repo = ModelRepository(repository)
    existing = repo.config(name) if (model_dir / CONFIG).is_file() else None
    version = version or (max(repo.versions(name), default=0) + 1 if model_dir.is_dir() else 1)
    target = model_dir / str(version)
    if target.exists():
        raise ExportError(f"{target} already exists: versions are immutable, export as a new version")
    config = _config_for(name, meta, max_batch_size, existing)

    net = load_network(meta["task"], checkpoint, len(meta["labels"]), meta.get("pooling", "mean"))
    if task == Task.CLASSIFICATION:
        net = CalibratedClassifier(net, meta["temperature"])
    net.eval()

    staging = model_dir / f".staging-{version}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        static = paddle.jit.to_static(
            net, input_spec=[InputSpec([None, None], "int64", "input_ids")], full_graph=True
        )
        paddle.jit.save(static, str(staging / "inference"))
        for extra in ("vocab.txt", "tokenizer.json", "training.json", "labels.txt"):
            if (checkpoint / extra).is_file():
                shutil.copy(checkpoint / extra, staging / extra)
        staged = ModelVersion(model_dir, version, config, verify=False, path=staging)

        tokenizer = staged.tokenizer()
        runner = PaddleRunner(staged, RunnerSettings(cpu_threads=2))
        dev_texts = _texts(Path(eval_data or meta["dev"]["path"]), task)
        worst = 0.0
        for ids in parity_inputs(tokenizer, dev_texts):
            with paddle.no_grad():
                eager = net(paddle.to_tensor(ids)).numpy()
            served = runner.run(ids)[OUTPUT_NAMES[task]]
            worst = max(worst, float(np.abs(eager - served).max()))
        if worst >= PARITY_TOLERANCE:
            raise ExportError(f"Paddle Inference differs from the training graph: max abs diff {worst:.2e}")

        report = evaluate(staged, Path(eval_data or meta["dev"]["path"]))
        report["export_parity_max_abs_diff"] = worst
        (staging / "evaluation.json").write_text(
            json.dumps(report, ensure_ascii=False, indent=2) + "\n", "utf-8"
        )
        write_manifest(staging)
        staging.rename(target)  # fails rather than replaces if the version appeared meanwhile
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    config.save(model_dir / CONFIG)
    log.info("exported %s version %s (parity %.2e)", name, version, worst)
    return repo.open(name, version)


def _texts(path: Path, task: Task) -> list[str]:
    from models.corpus import load_classification
    from services.faq.records import load_pairs

    if task == Task.CLASSIFICATION:
        return [e.text for e in load_classification(path)]
    return [t for p in load_pairs(path) for t in (p.text_a, p.text_b)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, type=Path, help="folder written by models.train")
    p.add_argument("--repository", required=True, type=Path, help="model repository root")
    p.add_argument("--name", required=True, help="model name in the repository (intent, sentiment, faq, ...)")
    p.add_argument("--version", type=int, help="version number (default: next free)")
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument(
        "--eval-data", type=Path, help="labelled file for evaluation.json (default: the training dev file)"
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        version = export_checkpoint(
            args.checkpoint, args.repository, args.name, args.version, args.max_batch_size, args.eval_data
        )
    except RepositoryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report = version.evaluation()
    print(
        json.dumps(
            {
                "exported": str(version.path),
                "evaluation": {k: v for k, v in report.items() if k != "per_label"},
            },
            ensure_ascii=False,
            indent=2,
        )
    )
    return 0
