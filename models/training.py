"""Training loops: classifier (cross-entropy, early stopping on dev macro-F1, temperature scaling) and
sentence encoder (in-batch negatives, early stopping on dev MRR); MLM pre-training (models/pretrain.py) runs
on the same loop. Eager Paddle; shows progress with tqdm; resumable from a checkpoint folder."""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import paddle
import paddle.nn.functional as F
from tqdm import tqdm

from models.calibration import calibrated_probs, fit_temperature
from models.corpus import TextExample
from models.hard_negatives import labelled_negatives, positive_groups
from models.metrics import classification_report, expected_calibration_error, retrieval_report
from models.modeling import ErnieClassifier, ErnieSentenceEncoder
from services.faq.records import PairExample, retrieval_split
from services.runtime.tokenizer import ErnieTextTokenizer

log = logging.getLogger(__name__)


@dataclass
class TrainOptions:
    epochs: int = 5
    max_steps: int = 0  # 0 = no cap; otherwise stop after this many optimiser steps
    batch_size: int = 32
    learning_rate: float = 5e-4
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    eval_every: int = 0  # steps between dev evaluations; 0 = once per epoch
    patience: int = 3  # evaluations without improvement before stopping
    seed: int = 42
    scale: float = 20.0  # encoder: similarity scale (1 / temperature) of the in-batch softmax
    hard_negatives: int = (
        0  # encoder: BM25 pool per pair, one drawn per step (models/hard_negatives.py); 0 = none
    )
    progress: bool = True
    end_lr_ratio: float = 0.0  # the learning rate decays linearly to learning_rate * this
    # a folder: the loop saves its state there at every evaluation and, started again, resumes from it
    checkpoint_dir: Path | None = None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    paddle.seed(seed)


def bucketed_batches(
    lengths: list[int], batch_size: int, rng: np.random.Generator, pool: int = 50
) -> list[list[int]]:
    """Shuffled batches of similar length (less padding): sort within pools of `pool` batches, shuffle batches."""
    order = rng.permutation(len(lengths))
    batches = []
    for start in range(0, len(order), batch_size * pool):
        chunk = sorted(order[start : start + batch_size * pool], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def _optimizer(net, total_steps: int, opts: TrainOptions):
    warmup = max(1, int(total_steps * opts.warmup_ratio))
    end_lr = opts.learning_rate * opts.end_lr_ratio
    decay = paddle.optimizer.lr.PolynomialDecay(
        opts.learning_rate, max(1, total_steps - warmup), end_lr=end_lr
    )
    schedule = paddle.optimizer.lr.LinearWarmup(decay, warmup, 0.0, opts.learning_rate)
    # biases, norms and the wide branch's n-gram table (mostly rows a batch never touches) are not decayed
    no_decay = {
        p.name for n, p in net.named_parameters() if "bias" in n or "norm" in n or n.startswith("wide.")
    }
    optimizer = paddle.optimizer.AdamW(
        learning_rate=schedule,
        parameters=net.parameters(),
        weight_decay=opts.weight_decay,
        apply_decay_param_fun=lambda name: name not in no_decay,
        grad_clip=paddle.nn.ClipGradByGlobalNorm(1.0),
    )
    return optimizer, schedule


@paddle.no_grad()
def forward_in_batches(
    net, tokenizer: ErnieTextTokenizer, texts: list[str], batch_size: int = 128
) -> np.ndarray:
    """Run the network in eval mode over texts, length-sorted for speed, results in input order."""
    was_training = net.training
    net.eval()
    ids = tokenizer.encode_ids(texts)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    outs: list[np.ndarray | None] = [None] * len(ids)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        result = net(paddle.to_tensor(tokenizer.pad([ids[i] for i in chunk]))).numpy()
        for row, i in zip(result, chunk, strict=True):
            outs[i] = row
    if was_training:
        net.train()
    return np.stack(outs)


class _EarlyStopper:
    def __init__(self, patience: int):
        self.patience, self.best, self.best_state, self.bad, self.history = patience, -math.inf, None, 0, []

    def update(self, net, score: float, step: int) -> bool:
        """Record a dev score; True when training should stop."""
        self.history.append({"step": step, "score": round(score, 4)})
        if score > self.best:
            self.best, self.bad = score, 0
            self.best_state = copy.deepcopy({k: v.numpy() for k, v in net.state_dict().items()})
        else:
            self.bad += 1
        return self.bad >= self.patience

    def restore(self, net) -> None:
        if self.best_state is not None:
            net.set_state_dict({k: paddle.to_tensor(v) for k, v in self.best_state.items()})


def _rename(state: dict, net, *, to_structured: bool) -> dict:
    """An optimiser state with its keys (`<parameter name>_moment1_0` …) between Paddle's unique parameter
    names, which differ from one process (or model built) to the next, and the structured names
    (`ernie.embeddings.word_embeddings.weight`), which do not."""
    pairs = [(p.name, n) for n, p in net.named_parameters()]
    if not to_structured:
        pairs = [(n, u) for u, n in pairs]
    pairs.sort(key=lambda pair: len(pair[0]), reverse=True)  # the longest prefix first
    out = {}
    for key, value in state.items():
        for old, new in pairs:
            if key.startswith(old + "_"):
                key = new + key[len(old) :]
                break
        out[key] = value
    return out


class _Checkpoint:
    """The loop's state in a folder (weights, optimiser and schedule, step, sampler, dev history), written at
    every evaluation so that a long run (pre-training: hours) can stop and go on from where it was."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def save(self, net, optimizer, step: int, rng: np.random.Generator, history: list[dict]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        paddle.save(net.state_dict(), str(self.folder / "model.pdparams.tmp"))
        paddle.save(
            _rename(optimizer.state_dict(), net, to_structured=True), str(self.folder / "optimizer.pdopt.tmp")
        )
        (self.folder / "loop.json.tmp").write_text(
            json.dumps({"step": step, "rng": rng.bit_generator.state, "history": history}), "utf-8"
        )
        for name in (
            "model.pdparams",
            "optimizer.pdopt",
            "loop.json",
        ):  # loop.json last: it marks a whole one
            os.replace(self.folder / f"{name}.tmp", self.folder / name)

    def load(self, net, optimizer, rng: np.random.Generator) -> tuple[int, list[dict]]:
        """(step, history) of the saved state, now loaded into net, optimizer and rng; (0, []) when none."""
        marker = self.folder / "loop.json"
        if not marker.exists():
            return 0, []
        state = json.loads(marker.read_text("utf-8"))
        net.set_state_dict(paddle.load(str(self.folder / "model.pdparams")))
        optimizer.set_state_dict(
            _rename(paddle.load(str(self.folder / "optimizer.pdopt")), net, to_structured=False)
        )
        rng.bit_generator.state = state["rng"]
        return int(state["step"]), list(state["history"])


def run_loop(net, n_examples: int, lengths, step_fn, evaluate, opts: TrainOptions, desc: str) -> dict:
    """Bucketed batches, AdamW with warm-up and linear decay, a dev evaluation every `eval_every` steps with
    early stopping on it (the best weights are kept), resumable from `opts.checkpoint_dir`."""
    rng = np.random.default_rng(opts.seed)
    steps_per_epoch = math.ceil(n_examples / opts.batch_size)
    total = steps_per_epoch * opts.epochs
    if opts.max_steps:
        total = min(total, opts.max_steps)
    eval_every = opts.eval_every or steps_per_epoch
    optimizer, schedule = _optimizer(net, total, opts)
    stopper = _EarlyStopper(opts.patience)
    checkpoint = _Checkpoint(opts.checkpoint_dir) if opts.checkpoint_dir else None
    resumed = 0
    if checkpoint is not None:
        resumed, stopper.history = checkpoint.load(net, optimizer, rng)
        if resumed:
            log.info("%s: resumed from %s at step %d", desc, checkpoint.folder, resumed)
    step, started, stop = resumed, time.time(), False
    bar = tqdm(total=total, initial=step, desc=desc, disable=not opts.progress, mininterval=2.0, unit="step")
    net.train()
    while step < total and not stop:
        for batch in bucketed_batches(lengths, opts.batch_size, rng):
            loss = step_fn(batch)
            loss.backward()
            optimizer.step()
            optimizer.clear_grad()
            schedule.step()
            step += 1
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{float(loss):.4f}", best=f"{stopper.best:.4f}")
            if step % eval_every == 0 or step == total:
                stop = stopper.update(net, evaluate(), step)
                bar.set_postfix(loss=f"{float(loss):.4f}", best=f"{stopper.best:.4f}")
                if checkpoint is not None:
                    checkpoint.save(net, optimizer, step, rng, stopper.history)
            if step >= total or stop:
                break
    bar.close()
    if not stopper.history or stopper.history[-1]["step"] != step:
        stopper.update(net, evaluate(), step)
    stopper.restore(net)
    return {
        "steps": step,
        "resumed_from_step": resumed,
        "seconds": round(time.time() - started, 1),
        "dev_history": stopper.history,
    }


def train_classifier(
    net: ErnieClassifier,
    tokenizer: ErnieTextTokenizer,
    train: list[TextExample],
    dev: list[TextExample],
    labels: list[str],
    opts: TrainOptions,
    class_weights: str = "none",
) -> tuple[float, dict]:
    """Train in place; returns (temperature fitted on dev, dev report with calibrated probabilities).

    `class_weights="balanced"` weighs each example's loss by n / (k * n_label) (labels absent from train get 1).
    """
    seed_everything(opts.seed)
    index = {label: i for i, label in enumerate(labels)}
    ids = tokenizer.encode_ids([e.text for e in train])
    y = np.array([index[e.label] for e in train], dtype=np.int64)
    dev_texts = [e.text for e in dev]
    dev_y = np.array([index[e.label] for e in dev], dtype=np.int64)
    weight = None
    if class_weights == "balanced":
        weight = paddle.to_tensor(balanced_class_weights(y, len(labels)))
    elif class_weights != "none":
        raise ValueError(f"class_weights must be none or balanced, got {class_weights!r}")

    def step_fn(batch):
        logits = net(paddle.to_tensor(tokenizer.pad([ids[i] for i in batch])))
        return F.cross_entropy(logits, paddle.to_tensor(y[batch]), weight=weight)

    def evaluate() -> float:
        logits = forward_in_batches(net, tokenizer, dev_texts)
        return classification_report(logits, dev_y, labels)["macro_f1"]

    info = run_loop(net, len(train), [len(x) for x in ids], step_fn, evaluate, opts, "train classifier")
    logits = forward_in_batches(net, tokenizer, dev_texts)
    temperature = fit_temperature(logits, dev_y)
    report = classification_report(calibrated_probs(logits, temperature), dev_y, labels)
    report["ece_uncalibrated"] = round(expected_calibration_error(calibrated_probs(logits, 1.0), dev_y), 4)
    report["temperature"] = round(temperature, 4)
    return temperature, {**report, "training": info}


def balanced_class_weights(y: np.ndarray, num_labels: int) -> np.ndarray:
    """n / (k * n_label) per label, as float32; a label with no example gets weight 1."""
    counts = np.bincount(y, minlength=num_labels).astype(np.float64)
    present = counts > 0
    weights = np.ones(num_labels)
    weights[present] = len(y) / (present.sum() * counts[present])
    return weights.astype(np.float32)


def train_encoder(
    net: ErnieSentenceEncoder,
    tokenizer: ErnieTextTokenizer,
    train: list[PairExample],
    dev: list[PairExample],
    opts: TrainOptions,
) -> dict:
    """In-batch-negatives contrastive training on positive pairs (symmetric loss); returns the dev report.

    With `opts.hard_negatives` = N, each pair also gets one of its question's first N labelled negatives (label-0
    rows of `train`, `models/hard_negatives.py` says where they come from), drawn anew each step: the question's
    softmax then runs over the batch's matches and the batch's hard negatives. Texts connected by positive pairs
    are never each other's negatives."""
    seed_everything(opts.seed)
    positives = sorted({(p.text_a, p.text_b) for p in train if p.label == 1})
    if not positives:
        raise ValueError("training data has no positive pairs (label 1)")
    groups = positive_groups(positives)
    group = np.array([groups[a] for a, _ in positives])
    ids_a = tokenizer.encode_ids([a for a, _ in positives])
    ids_b = tokenizer.encode_ids([b for _, b in positives])
    kb, queries, gold = retrieval_split(dev)
    negatives: list[list[int]] = [[] for _ in positives]
    neg_ids: list[list[int]] = []
    neg_group = np.zeros(0, dtype=np.int64)
    if opts.hard_negatives:
        rows = [(p.text_a, p.text_b, p.label) for p in train]
        found = labelled_negatives(rows, [a for a, _ in positives], groups, opts.hard_negatives)
        neg_texts = sorted({t for m in found for t in m})
        where = {t: i for i, t in enumerate(neg_texts)}
        negatives = [[where[t] for t in m] for m in found]
        neg_ids = tokenizer.encode_ids(neg_texts)
        neg_group = np.array([groups.get(t, -1) for t in neg_texts], dtype=np.int64)
        log.info("hard negatives: %d of %d pairs have some", sum(map(bool, negatives)), len(positives))
    draw = np.random.default_rng(opts.seed + 1)

    def step_fn(batch):
        emb_a = net(paddle.to_tensor(tokenizer.pad([ids_a[i] for i in batch])))
        emb_b = net(paddle.to_tensor(tokenizer.pad([ids_b[i] for i in batch])))
        g = group[batch]
        # another pair of the same positive group is not a negative (the same question twice, or transitively)
        clash = (g[:, None] == g[None, :]) & ~np.eye(len(batch), dtype=bool)
        sim = paddle.matmul(emb_a, emb_b, transpose_y=True) * opts.scale
        sim_b = sim.T
        have = [i for i in batch if negatives[i]]
        if have:
            # one column per pair that has hard negatives: one of them, drawn anew each step
            picked = [int(draw.choice(negatives[i])) for i in have]
            emb_n = net(paddle.to_tensor(tokenizer.pad([neg_ids[n] for n in picked])))
            n_clash = g[:, None] == neg_group[picked][None, :]
            sim = paddle.concat([sim, paddle.matmul(emb_a, emb_n, transpose_y=True) * opts.scale], axis=1)
            clash = np.concatenate([clash, n_clash], axis=1)
        if clash.any():
            sim = paddle.where(paddle.to_tensor(clash), paddle.full_like(sim, -1e4), sim)
            square = paddle.to_tensor(clash[:, : len(batch)].T)
            sim_b = paddle.where(square, paddle.full_like(sim_b, -1e4), sim_b)
        target = paddle.arange(len(batch), dtype="int64")
        return (F.cross_entropy(sim, target) + F.cross_entropy(sim_b, target)) / 2

    def evaluate() -> float:
        return _retrieval(net, tokenizer, kb, queries, gold)["mrr"]

    lengths = [len(a) + len(b) for a, b in zip(ids_a, ids_b, strict=True)]
    info = run_loop(net, len(positives), lengths, step_fn, evaluate, opts, "train encoder")
    report = _retrieval(net, tokenizer, kb, queries, gold)
    extra = {"pairs_with_hard_negatives": sum(map(bool, negatives))} if opts.hard_negatives else {}
    return {**report, "training": info, "train_pairs": len(positives), **extra}


def _retrieval(net, tokenizer, kb, queries, gold) -> dict:
    kb_emb = forward_in_batches(net, tokenizer, kb)
    q_emb = forward_in_batches(net, tokenizer, queries)
    return retrieval_report(q_emb @ kb_emb.T, gold)
