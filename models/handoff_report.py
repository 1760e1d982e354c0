"""What the gateway's hand-over rules would do with an exported intent / sentiment model, measured on dev.

    python -m models.handoff_report --sentiment model_repository/sentiment --intent model_repository/intent

Sentiment (2- or 3-label: any model with a `negative` label): P(negative) on the dev populations of
data/sentiment/dev.jsonl (by `source`): neutral customer-service questions (demo KB held-out queries, demo
intent dev requests), angry customer messages (written dev split + demo 投诉), all neutral rows, reviews.
It proposes the hand-over threshold: the lowest P(negative) at which at most `max_neutral` of the neutral
customer-service questions are handed over (the targets: ≤ 1 % neutral, ≥ 90 % angry).

Intent: the false hand-over rate — share of plain questions (held-out demo KB queries of the request
categories, demo intent dev texts of the request intents) whose top intent is a hand-over intent (投诉 / 转人工) at or above the policy's minimum
confidence — and, with both models, the share of those questions handed over by either rule.
Everything runs through Paddle Inference, exactly as served.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from models.sentiment_data import ANGRY_CS_SOURCES, NEUTRAL_CS_SOURCES, REQUEST_INTENTS
from services.faq.records import read_records

DATA = Path(__file__).resolve().parent.parent / "data"
HANDOFF_INTENTS = ("投诉", "转人工")
HANDOFF_MIN_CONFIDENCE = 0.5  # services/gateway/defaults/policy.yaml intent.handoff_min_confidence
GRID = np.round(np.arange(0.50, 0.995, 0.01), 2)


def _probs(model: Path, texts: list[str]) -> tuple[np.ndarray, list[str]]:
    from models.evaluate import open_version, predict
    from services.runtime.runner import PaddleRunner, RunnerSettings

    version = open_version(model)
    return predict(PaddleRunner(version, RunnerSettings(cpu_threads=2)), texts), version.labels


def p_negative(model: Path, texts: list[str]) -> np.ndarray:
    probs, labels = _probs(model, texts)
    if "negative" not in labels:
        raise ValueError(f"{model}: no `negative` label in {labels}")
    return probs[:, labels.index("negative")]


def sentiment_populations(dev: Path) -> dict[str, list[str]]:
    rows = [rec for _, rec in read_records(dev)]
    return {
        "neutral_cs_questions": [
            r["text"] for r in rows if r["label"] == "neutral" and r.get("source") in NEUTRAL_CS_SOURCES
        ],
        "angry_cs_messages": [
            r["text"] for r in rows if r["label"] == "negative" and r.get("source") in ANGRY_CS_SOURCES
        ],
        "neutral_all": [r["text"] for r in rows if r["label"] == "neutral"],
        "reviews_negative": [
            r["text"] for r in rows if r["label"] == "negative" and r.get("source") not in ANGRY_CS_SOURCES
        ],
    }


def choose_threshold(neutral: np.ndarray, max_neutral: float) -> float:
    """The lowest grid threshold at which at most `max_neutral` of the neutral scores reach it."""
    for t in GRID:
        if float((neutral >= t).mean()) <= max_neutral:
            return float(t)
    return float(GRID[-1])


def sentiment_report(model: Path, dev: Path, max_neutral: float = 0.01) -> dict:
    populations = sentiment_populations(dev)
    scores = {name: p_negative(model, texts) for name, texts in populations.items() if texts}
    threshold = choose_threshold(scores["neutral_cs_questions"], max_neutral)

    def above(t: float) -> dict:
        return {name: round(float((s >= t).mean()), 4) for name, s in scores.items()}

    return {
        "model": str(model),
        "dev": str(dev),
        "n": {name: len(texts) for name, texts in populations.items()},
        "proposed_threshold": threshold,
        "rule": f"lowest P(negative) in {GRID[0]}..{GRID[-1]} with at most {max_neutral:.1%} of neutral "
        "customer-service dev questions at or above it",
        "share_at_or_above": {str(t): above(t) for t in sorted({threshold, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98})},
        "neutral_cs_p_negative_quantiles": {
            q: round(float(np.quantile(scores["neutral_cs_questions"], float(q))), 4)
            for q in ("0.5", "0.9", "0.99", "1.0")
        },
        "angry_cs_p_negative_quantiles": {
            q: round(float(np.quantile(scores["angry_cs_messages"], float(q))), 4)
            for q in ("0.0", "0.05", "0.1", "0.5")
        },
    }


def _kb_queries(data: Path) -> list[tuple[str, str | None]]:
    """(query, category of its FAQ, None when out of scope) for the demo KB's held-out queries."""
    category = {rec["id"]: rec["category"] for _, rec in read_records(data / "faq_kb_demo" / "faq.jsonl")}
    return [
        (r["query"], category[r["faq_id"]] if r.get("faq_id") else None)
        for _, r in read_records(data / "faq_kb_demo" / "queries_dev.jsonl")
    ]


def plain_questions(data: Path = DATA) -> list[str]:
    """Held-out KB queries of the request categories, demo intent dev requests. (The out-of-scope queries are
    not plain questions: "我要你们总经理亲自给我打电话道歉" is among them.)"""
    queries = [q for q, cat in _kb_queries(data) if cat in REQUEST_INTENTS]
    intents = [
        r["text"]
        for _, r in read_records(data / "intent_cs_demo" / "dev.jsonl")
        if r["label"] in REQUEST_INTENTS
    ]
    return queries + intents


def complaint_kb_queries(data: Path = DATA) -> list[str]:
    """Held-out queries of the KB's 投诉 FAQs ("送货的师傅很凶 去哪投诉他"): answerable, but complaints by the
    intent taxonomy, so whether they are handed over is the policy's choice; reported apart."""
    return [q for q, cat in _kb_queries(data) if cat == "投诉"]


def intent_report(model: Path, questions: list[str], min_confidence: float = HANDOFF_MIN_CONFIDENCE) -> dict:
    probs, labels = _probs(model, questions)
    top = probs.argmax(axis=1)
    handed = np.array(
        [labels[i] in HANDOFF_INTENTS and p[i] >= min_confidence for i, p in zip(top, probs, strict=True)]
    )
    return {
        "model": str(model),
        "n_plain_questions": len(questions),
        "false_handoff_rate": round(float(handed.mean()), 4),
        "false_handoffs": [q for q, h in zip(questions, handed, strict=True) if h],
        "handed": handed,
    }


def intent_confidence_table(model: Path, questions: list[str], data: Path = DATA) -> dict:
    """For candidate `intent.handoff_min_confidence` values: plain questions handed over, and demo intent dev
    投诉 / 转人工 messages handed over (what a higher bar costs)."""
    wanted = [
        r["text"]
        for _, r in read_records(data / "intent_cs_demo" / "dev.jsonl")
        if r["label"] in HANDOFF_INTENTS
    ]
    plain, labels = _probs(model, questions)
    handoff, _ = _probs(model, wanted)

    def rate(probs: np.ndarray, c: float) -> float:
        top = probs.argmax(axis=1)
        return round(
            float(
                np.mean([labels[i] in HANDOFF_INTENTS and p[i] >= c for i, p in zip(top, probs, strict=True)])
            ),
            4,
        )

    return {
        str(c): {"plain_questions": rate(plain, c), "complaint_or_human_requests": rate(handoff, c)}
        for c in (0.5, 0.6, 0.7, 0.8)
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.handoff_report", description=__doc__.split("\n\n")[0])
    p.add_argument("--sentiment", type=Path, help="sentiment model folder or version folder")
    p.add_argument("--intent", type=Path, help="intent model folder or version folder")
    p.add_argument("--dev", type=Path, default=DATA / "sentiment" / "dev.jsonl", help="3-class sentiment dev")
    p.add_argument(
        "--threshold", type=float, help="sentiment hand-over threshold (default: the proposed one)"
    )
    p.add_argument("--max-neutral", type=float, default=0.01, help="neutral share allowed at the threshold")
    p.add_argument("--out", type=Path, help="also write the report here (JSON)")
    args = p.parse_args(argv)
    report: dict = {}
    questions = plain_questions()
    if args.sentiment:
        report["sentiment"] = sentiment_report(args.sentiment, args.dev, args.max_neutral)
    if args.intent:
        intent = intent_report(args.intent, questions)
        handed = intent.pop("handed")
        complaints = intent_report(args.intent, complaint_kb_queries())
        complaints.pop("handed")
        intent["complaint_kb_queries"] = {
            "n": complaints["n_plain_questions"],
            "handed_over_by_intent": complaints["false_handoff_rate"],
        }
        intent["by_min_confidence"] = intent_confidence_table(args.intent, questions)
        report["intent"] = intent
        if args.sentiment:
            t = args.threshold or report["sentiment"]["proposed_threshold"]
            by_sentiment = p_negative(args.sentiment, questions) >= t
            report["plain_questions_handed_over"] = {
                "threshold": t,
                "by_intent": round(float(handed.mean()), 4),
                "by_sentiment": round(float(by_sentiment.mean()), 4),
                "either": round(float((handed | by_sentiment).mean()), 4),
            }
    text = json.dumps(report, ensure_ascii=False, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", "utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
