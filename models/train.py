"""Train an ERNIE intent/sentiment classifier or FAQ sentence encoder.

    python -m models.train --task classification --train train.jsonl --dev dev.jsonl --out runs/intent
    python -m models.train --task embedding --train pairs.jsonl --dev pairs_dev.jsonl --out runs/faq \\
        --init models/pretrained/ernie-tiny-cs

Data: JSONL or CSV, `{"text","label"}` for classification, `{"text_a","text_b","label"}` for embedding.
`--init DIR` starts from a paddlenlp-format ERNIE checkpoint (its vocab.txt is used); without it a small ERNIE
is trained from scratch on a character vocabulary built from the training data.
The output folder is what `python -m export` takes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

from models.corpus import file_sha256, label_set, load_classification
from models.vocab import build_char_vocab, write_vocab
from services.faq.records import DataError, load_pairs
from services.runtime.tokenizer import ErnieTextTokenizer, TokenizerSettings

TASK_ALIASES = {"intent": "classification", "sentiment": "classification", "faq": "embedding"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m models.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--task", required=True, choices=["classification", "embedding", *TASK_ALIASES])
    p.add_argument("--train", required=True, type=Path, help="training file (.jsonl or .csv)")
    p.add_argument("--dev", required=True, type=Path, help="dev file: early stopping and calibration")
    p.add_argument("--out", required=True, type=Path, help="checkpoint folder to write")
    p.add_argument("--init", type=Path, help="paddlenlp-format ERNIE checkpoint folder to start from")
    p.add_argument(
        "--labels", type=Path, help="labels.txt (one per line): fixes the label order and rejects others"
    )
    p.add_argument(
        "--arch", default="tiny", help="from-scratch architecture: tiny (default) or micro (tests)"
    )
    p.add_argument(
        "--pooling", choices=["mean", "cls"], default="mean", help="classifier: token mean or [CLS] pooler"
    )
    p.add_argument(
        "--wide-buckets",
        type=int,
        default=0,
        help="classifier: add a wide branch, a bag of hashed character n-grams with this many rows (0 = none)",
    )
    p.add_argument("--wide-dim", type=int, default=32, help="wide branch: embedding width")
    p.add_argument("--wide-ngrams", default="1,2,3", help="wide branch: n-gram orders, comma-separated")
    p.add_argument("--wide-lr-scale", type=float, default=20.0, help="wide branch: learning-rate multiplier")
    p.add_argument(
        "--class-weights",
        choices=["none", "balanced"],
        default="none",
        help="classifier: balanced = loss weights n / (k * n_label), for macro-F1 on skewed labels",
    )
    p.add_argument("--max-seq-len", type=int, default=64)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--max-steps", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--eval-every", type=int, default=0)
    p.add_argument("--patience", type=int, default=3)
    p.add_argument("--scale", type=float, default=20.0, help="encoder similarity scale")
    p.add_argument(
        "--hard-negatives",
        type=int,
        default=0,
        help="encoder: per pair, draw one of the N texts BM25 ranks highest that are not its positives (0 = none)",
    )
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--min-char-freq", type=int, default=1, help="from-scratch vocabulary: minimum count")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    args.task = TASK_ALIASES.get(args.task, args.task)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = train(args)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, ensure_ascii=False, indent=2))
    return 0


def _load_data(args):
    if args.task == "classification":
        fixed = args.labels.read_text("utf-8").split() if args.labels else None
        train = load_classification(args.train, fixed)
        labels = fixed or label_set(train)
        if len(labels) < 2:
            raise DataError(f"{args.train}: need at least two labels, found {labels}")
        dev = load_classification(args.dev, labels)  # a dev label unseen in training is an error
        return train, dev, labels, [e.text for e in train]
    train, dev = load_pairs(args.train), load_pairs(args.dev)
    if not any(p.label == 1 for p in train):
        raise DataError(f"{args.train}: no positive pairs (label 1) to train on")
    return train, dev, [], [t for p in train for t in (p.text_a, p.text_b)]


def train(args: argparse.Namespace) -> dict:
    from models.modeling import (
        ARCHS,
        ErnieClassifier,
        ErnieSentenceEncoder,
        WideConfig,
        load_backbone,
        save_network,
    )
    from models.training import TrainOptions, seed_everything, train_classifier, train_encoder

    train_data, dev_data, labels, texts = _load_data(args)
    seed_everything(args.seed)
    staging = args.out.with_name(args.out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    if args.init:
        vocab_src = args.init / "vocab.txt"
        if not vocab_src.is_file():
            raise DataError(f"{args.init}: no vocab.txt beside the checkpoint")
        shutil.copy(vocab_src, staging / "vocab.txt")
    else:
        write_vocab(build_char_vocab(texts, min_freq=args.min_char_freq), staging / "vocab.txt")
    settings = TokenizerSettings(max_seq_len=args.max_seq_len)
    tokenizer = ErnieTextTokenizer.from_settings(staging, settings)
    backbone = load_backbone(args.init, ARCHS[args.arch], tokenizer.vocab_size)
    opts = TrainOptions(
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        eval_every=args.eval_every,
        patience=args.patience,
        seed=args.seed,
        scale=args.scale,
        hard_negatives=args.hard_negatives if args.task == "embedding" else 0,
        progress=not args.no_progress,
    )
    started = time.time()
    wide = None
    if args.task == "classification" and args.wide_buckets:
        ngrams = tuple(int(n) for n in args.wide_ngrams.split(","))
        wide = WideConfig(args.wide_buckets, args.wide_dim, ngrams, args.wide_lr_scale)
    if args.task == "classification":
        net = ErnieClassifier(backbone, len(labels), pooling=args.pooling, wide=wide)
        temperature, report = train_classifier(
            net, tokenizer, train_data, dev_data, labels, opts, class_weights=args.class_weights
        )
        (staging / "labels.txt").write_text("\n".join(labels) + "\n", "utf-8")
    else:
        net = ErnieSentenceEncoder(backbone)
        temperature, report = None, train_encoder(net, tokenizer, train_data, dev_data, opts)
    save_network(net, backbone, staging)
    shutil.copy(staging / "vocab.txt", staging / "backbone" / "vocab.txt")
    settings.save(staging / "tokenizer.json")
    meta = {
        "task": args.task,
        "labels": labels,
        "temperature": temperature,
        "pooling": args.pooling if args.task == "classification" else "mean",
        "max_seq_len": args.max_seq_len,
        "wide": asdict(wide) if wide else None,
        "class_weights": args.class_weights if args.task == "classification" else None,
        "embedding_dim": backbone.config.hidden_size if args.task == "embedding" else None,
        "init": str(args.init) if args.init else None,
        "arch": asdict(ARCHS[args.arch]) if not args.init else None,
        "backbone_config": {
            k: backbone.config.to_dict()[k] for k in ("hidden_size", "num_hidden_layers", "vocab_size")
        },
        "train": {"path": str(args.train), "sha256": file_sha256(args.train), "rows": len(train_data)},
        "dev": {"path": str(args.dev), "sha256": file_sha256(args.dev), "rows": len(dev_data)},
        "options": asdict(opts),
        "seconds": round(time.time() - started, 1),
    }
    (staging / "training.json").write_text(json.dumps(meta, ensure_ascii=False, indent=2) + "\n", "utf-8")
    (staging / "dev_report.json").write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", "utf-8")
    shutil.rmtree(args.out, ignore_errors=True)
    staging.rename(args.out)
    return {
        "out": str(args.out),
        "dev": {k: v for k, v in report.items() if k not in ("per_label", "training")},
    }


if __name__ == "__main__":
    sys.exit(main())
