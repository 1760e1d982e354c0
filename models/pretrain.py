"""Domain-adaptive masked-language-model pre-training of a small ERNIE on unlabelled Chinese text.

    python -m models.pretrain --data ../shared/data --out models/pretrained/ernie-tiny-cs

The corpus is every text of every *train* split under --data (dev/test text is never read) plus the
repo's own data/ folder; the character vocabulary is built from it. Writes a paddlenlp-format checkpoint
(config.json, model_state.pdparams, vocab.txt, tokenizer_config.json) usable as `models.train --init`.
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

from models.corpus import read_records
from models.vocab import build_char_vocab, write_vocab
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
    args = p.parse_args(argv)

    import paddle
    import paddle.nn.functional as F
    from paddlenlp.transformers import ErnieForMaskedLM, ErnieTokenizer
    from tqdm import tqdm

    from models.modeling import ARCHS
    from models.training import bucketed_batches, seed_everything

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

    config = ARCHS[args.arch].ernie_config(tokenizer.vocab_size)
    model = ErnieForMaskedLM(config)
    warmup = max(1, args.steps // 20)
    schedule = paddle.optimizer.lr.LinearWarmup(
        paddle.optimizer.lr.PolynomialDecay(args.lr, args.steps - warmup, end_lr=args.lr * 0.05),
        warmup,
        0.0,
        args.lr,
    )
    optimizer = paddle.optimizer.AdamW(
        learning_rate=schedule,
        parameters=model.parameters(),
        weight_decay=0.01,
        grad_clip=paddle.nn.ClipGradByGlobalNorm(1.0),
    )

    def mlm_loss(batch_ids: list[list[int]], mask_rng):
        inputs, positions, targets = mask_tokens(tokenizer.pad(batch_ids), tokenizer, mask_rng)
        logits = model(
            paddle.to_tensor(inputs), masked_positions=paddle.to_tensor(positions), return_dict=False
        )
        if isinstance(logits, tuple):
            logits = logits[0]
        target = paddle.to_tensor(targets)
        return F.cross_entropy(logits, target), (logits.argmax(-1) == target).astype("float32").mean()

    @paddle.no_grad()
    def evaluate() -> dict:
        model.eval()
        eval_rng = np.random.default_rng(0)  # the same masks every time
        losses, accs = [], []
        for start in range(0, len(eval_ids), 128):
            loss, acc = mlm_loss(eval_ids[start : start + 128], eval_rng)
            losses.append(float(loss))
            accs.append(float(acc))
        model.train()
        return {"loss": round(float(np.mean(losses)), 4), "accuracy": round(float(np.mean(accs)), 4)}

    history = [{"step": 0, **evaluate()}]
    lengths = [len(x) for x in train_ids]
    step, started = 0, time.time()
    bar = tqdm(total=args.steps, desc="MLM pre-training", mininterval=5.0, unit="step")
    model.train()
    while step < args.steps:
        for batch in bucketed_batches(lengths, args.batch_size, rng):
            loss, _ = mlm_loss([train_ids[i] for i in batch], rng)
            loss.backward()
            optimizer.step()
            optimizer.clear_grad()
            schedule.step()
            step += 1
            bar.update(1)
            if step % 50 == 0:
                bar.set_postfix(loss=f"{float(loss):.3f}", eval_loss=history[-1]["loss"])
            if step % 1000 == 0 or step == args.steps:
                history.append({"step": step, **evaluate()})
                bar.write(f"step {step}: held-out MLM {history[-1]}")
            if step >= args.steps:
                break
    bar.close()
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
        "seconds": round(time.time() - started, 1),
        "held_out_mlm": history,
        "perplexity": round(math.exp(history[-1]["loss"]), 2),
    }
    (args.out / "pretrain.json").write_text(
        json.dumps(provenance, ensure_ascii=False, indent=2) + "\n", "utf-8"
    )
    print(json.dumps(provenance, ensure_ascii=False, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
