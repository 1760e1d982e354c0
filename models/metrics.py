"""Evaluation metrics: classification quality, calibration (ECE) and retrieval (recall@k, MRR)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE with equal-width confidence bins."""
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return float(ece)


def classification_report(probs: np.ndarray, y: np.ndarray, labels: list[str]) -> dict:
    pred = probs.argmax(axis=1)
    idx = list(range(len(labels)))
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=idx, zero_division=0)
    return {
        "n": int(len(y)),
        "accuracy": round(float(accuracy_score(y, pred)), 4),
        "macro_f1": round(float(f1_score(y, pred, labels=idx, average="macro", zero_division=0)), 4),
        "ece": round(expected_calibration_error(probs, y), 4),
        "per_label": {
            labels[i]: {
                "precision": round(float(p[i]), 4),
                "recall": round(float(r[i]), 4),
                "f1": round(float(f[i]), 4),
                "support": int(s[i]),
            }
            for i in idx
        },
    }


def retrieval_report(scores: np.ndarray, gold: list[int] | np.ndarray) -> dict:
    """`scores[q, d]`: similarity of query q to knowledge-base entry d; `gold[q]`: the right entry."""
    gold = np.asarray(gold)
    gold_scores = scores[np.arange(len(gold)), gold]
    # rank = 1 + number of entries scored strictly higher than the gold one (ties resolved in its favour)
    ranks = 1 + (scores > gold_scores[:, None]).sum(axis=1)
    report = {"n_queries": int(len(gold)), "kb_size": int(scores.shape[1])}
    for k in (1, 5, 10):
        report[f"recall_at_{k}"] = round(float((ranks <= k).mean()), 4)
    report["mrr"] = round(float((1.0 / ranks).mean()), 4)
    return report
