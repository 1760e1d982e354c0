"""Domain-adaptive masked-language-model pre-training of a small ERNIE on unlabelled Chinese text.

    python -m models.pretrain --data ../shared/data --out models/pretrained/ernie-tiny-cs

The corpus is every text of every *train* split under --data (dev/test text is never read) plus the
repo's own data/ folder; the character vocabulary is built from it. Writes a paddlenlp-format checkpoint
(config.json, model_state.pdparams, vocab.txt, tokenizer_config.json) usable as `models.train --init`.

Resumable: the loop (models/training.py, the one the classifiers and the encoder train on) writes its state to
`--checkpoint-dir` (default `runs/pretrain-<name of --out>`) at every held-out evaluation (`--eval-every`);
the same command started again goes on from the last one, so hours of pre-training can be spread over several
runs (Ctrl-C loses at most `--eval-every` steps). Delete the folder to start over.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from models.vocab import build_char_vocab, write_vocab
from services.faq.records import read_records
from services.runtime.tokenizer import SPECIAL_TOKENS, ErnieTextTokenizer

TEXT_FIELDS = ("text", "text_a", "text_b", "question", "answer", "query")


def collect_corpus(roots: list[Path], chunk: int) -> tuple[list[str], list[str]]:
    """Distinct texts from train splits (and the repo data, which has no test split), long ones cut in chunks."""
    files = []
    for root in roots:
        files += sorted(p for p in root.rglob("*.jsonl") if p.name.startswith(("train", "faq")))
    texts, seen = [], set()
    for path in files:
        for _, rec in read_records(path):
            values = [rec.get(f) for f in TEXT_FIELDS] + list(rec.get("alternatives") or [])
            for value in values:
                if not isinstance(value, str) or not value.strip():
                    continue
                value = value.strip()
                for start in range(0, len(value), chunk):
                    piece = value[start : start + chunk]
                    if len(piece) >= 2 and piece not in seen:
                        seen.add(piece)
                        texts.append(piece)
    return texts, [str(p) for p in files]


def mask_tokens(
    batch: np.ndarray, tokenizer: ErnieTextTokenizer, rng: np.random.Generator, rate: float = 0.15
):
    """BERT masking: of `rate` of the real tokens, 80% -> [MASK], 10% -> random, 10% kept."""
    special = np.isin(batch, [tokenizer.pad_id, tokenizer.cls_id, tokenizer.sep_id])
    chosen = (rng.random(batch.shape) < rate) & ~special
    for row in range(batch.shape[0]):  # at least one prediction per sequence
        if not chosen[row].any():
            candidates = np.flatnonzero(~special[row])
            chosen[row, rng.choice(candidates)] = True
    inputs = batch.copy()
    roll = rng.random(batch.shape)
    inputs[chosen & (roll < 0.8)] = tokenizer.mask_id
    random_slots = chosen & (roll >= 0.8) & (roll < 0.9)
    inputs[random_slots] = rng.integers(len(SPECIAL_TOKENS), tokenizer.vocab_size, size=random_slots.sum())
    positions = np.flatnonzero(chosen.reshape(-1)).astype(np.int64)
    return inputs, positions, batch.reshape(-1)[positions]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.pretrain", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data", type=Path, action="append", required=True, help="folder(s) of *.jsonl (repeatable)"
    )
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-seq-len", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-char-freq", type=int, default=3)
    p.add_argument("--vocab-size", type=int, default=6000)
    p.add_argument("--arch", default="tiny")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--eval-every", type=int, default=1000, help="steps between held-out evaluations")
    p.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=None,
        help="the run's state, written at every evaluation; a run started again resumes from it "
        "(default runs/pretrain-<name of --out>)",
    )
    args = p.parse_args(argv)

    import paddle
    import paddle.nn.functional as F
    from paddlenlp.transformers import ErnieForMaskedLM, ErnieTokenizer

    from models.modeling import ARCHS
    from models.training import TrainOptions, run_loop, seed_everything

    seed_everything(args.seed)
    texts, files = collect_corpus(args.data, args.max_seq_len - 2)
    print(f"corpus: {len(texts)} distinct texts from {len(files)} files", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    write_vocab(build_char_vocab(texts, args.min_char_freq, args.vocab_size), args.out / "vocab.txt")
    tokenizer = ErnieTextTokenizer(args.out / "vocab.txt", args.max_seq_len)
    ids = tokenizer.encode_ids(texts)
    rng = np.random.default_rng(args.seed)
    held_out = set(rng.choice(len(ids), size=min(2000, len(ids) // 50), replace=False).tolist())
    train_ids = [x for i, x in enumerate(ids) if i not in held_out]
    eval_ids = [ids[i] for i in sorted(held_out)]

    checkpoint_dir = args.checkpoint_dir or Path("runs") / f"pretrain-{args.out.name}"
    vocab = (args.out / "vocab.txt").read_text("utf-8")
    kept = checkpoint_dir / "vocab.txt"
    if kept.exists() and kept.read_text("utf-8") != vocab:
        print(
            f"error: {checkpoint_dir} was trained on another vocabulary (the corpus changed); delete it to "
            "start over",
            file=sys.stderr,
        )
        return 2
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    kept.write_text(vocab, "utf-8")
    config = ARCHS[args.arch].ernie_config(tokenizer.vocab_size)
    model = ErnieForMaskedLM(config)
    mask_rng = np.random.default_rng(args.seed + 1)

    def mlm_loss(batch_ids: list[list[int]], rng):
        inputs, positions, targets = mask_tokens(tokenizer.pad(batch_ids), tokenizer, rng)
        logits = model(
            paddle.to_tensor(inputs), masked_positions=paddle.to_tensor(positions), return_dict=False
        )
        if isinstance(logits, tuple):
            logits = logits[0]
        target = paddle.to_tensor(targets)
        return F.cross_entropy(logits, target), (logits.argmax(-1) == target).astype("float32").mean()

    history: list[dict] = []

    @paddle.no_grad()
    def evaluate() -> float:
        """Held-out MLM loss and accuracy (the same masks every time); the loop keeps the lowest loss."""
        model.eval()
        eval_rng = np.random.default_rng(0)
        losses, accs = [], []
        for start in range(0, len(eval_ids), 128):
            loss, acc = mlm_loss(eval_ids[start : start + 128], eval_rng)
            losses.append(float(loss))
            accs.append(float(acc))
        model.train()
        history.append({"loss": round(float(np.mean(losses)), 4), "accuracy": round(float(np.mean(accs)), 4)})
        print(f"held-out MLM {history[-1]}", file=sys.stderr, flush=True)
        return -history[-1]["loss"]

    opts = TrainOptions(
        epochs=10**6,  # bounded by max_steps
        max_steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        warmup_ratio=0.05,
        end_lr_ratio=0.05,
        eval_every=args.eval_every,
        patience=10**6,  # no early stop: the lowest held-out loss seen is kept
        seed=args.seed,
        checkpoint_dir=checkpoint_dir,
    )
    started = time.time()
    result = run_loop(
        model,
        len(train_ids),
        [len(x) for x in train_ids],
        lambda batch: mlm_loss([train_ids[i] for i in batch], mask_rng)[0],
        evaluate,
        opts,
        "MLM pre-training",
    )
    step = result["steps"]
    with contextlib.redirect_stdout(io.StringIO()):
        model.ernie.save_pretrained(str(args.out))
        ErnieTokenizer(str(args.out / "vocab.txt")).save_pretrained(str(args.out))
    provenance = {
        "command": "python -m models.pretrain " + " ".join(argv if argv is not None else sys.argv[1:]),
        "corpus_files": files,
        "corpus_texts": len(texts),
        "vocab_size": tokenizer.vocab_size,
        "steps": step,
        "epochs_seen": round(step * args.batch_size / max(1, len(train_ids)), 2),
        "resumed_from_step": result["resumed_from_step"],
        "seconds_this_run": round(time.time() - started, 1),
        "held_out_mlm": [{"step": h["step"], "loss": -h["score"]} for h in result["dev_history"]],
        "perplexity": round(
            math.exp(-max(h["score"] for h in result["dev_history"])), 2
        ),  # of the kept weights
    }
    (args.out / "pretrain.json").write_text(
        json.dumps(provenance, ensure_ascii=False, indent=2) + "\n", "utf-8"
    )
    print(json.dumps(provenance, ensure_ascii=False, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
