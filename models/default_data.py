"""Regenerate the training data shipped in data/ for the default sentiment and FAQ-encoder models.

    python -m models.default_data --data ../shared/data --out data

data/sentiment/{train,dev}.jsonl  = 3-class customer-service sentiment (negative / neutral / positive): review
                                    polarity + neutral requests + angry customer messages, with `source`
                                    (models/sentiment_data.py says what comes from where)
data/intent/train.jsonl           = intent_cs_demo train + the demo KB's standard questions and alternatives of the
                                    request categories (物流查询 … 账户/密码), labelled with their category
data/faq_pairs/{train,dev}.jsonl  = atec_nlp_sim pairs (train / dev) + pairs from the demo FAQ knowledge base:
                                    in train every two phrasings of one FAQ (standard question and alternatives,
                                    label 1) and, per phrasing, the 5 phrasings of other FAQs BM25 ranks highest
                                    (label 0, source faq_kb_demo_bm25: the encoder's hard negatives);
                                    (standard question, held-out user query) in dev.
BQ corpus is not shipped: its terms allow academic research use on application only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from models.hard_negatives import mine_hard_negatives
from models.sentiment_data import REQUEST_INTENTS, build_split
from services.faq.records import read_records


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{path}: {len(rows)} rows")


def intent_train_rows(data: Path, faq: list[dict]) -> list[dict]:
    """intent_cs_demo train, then KB phrasings of the request categories (the 投诉 FAQs are questions about how
    to complain, "怎么鉴定真假" among them: as 投诉 examples they would teach the model to hand plain questions
    over), first occurrence of a text wins."""
    rows = [
        {"text": r["text"], "label": r["label"]}
        for _, r in read_records(data / "intent_cs_demo" / "train.jsonl")
    ]
    rows += [
        {"text": text, "label": f["category"]}
        for f in faq
        if f["category"] in REQUEST_INTENTS
        for text in (f["question"], *f["alternatives"])
    ]
    seen: set[str] = set()
    return [r for r in rows if not (r["text"] in seen or seen.add(r["text"]))]


def faq_train_rows(faq: list[dict], hard_negatives: int = 5) -> list[dict]:
    """Knowledge-base pairs for the encoder: every two phrasings of one FAQ (question first, then alternatives in
    order) as positives, then for each phrasing that starts a pair its `hard_negatives` BM25 neighbours among the
    other FAQs' phrasings as label-0 rows. Different FAQs of one knowledge base never mean the same, so these
    negatives are true ones (mined ATEC neighbours are not: `models/hard_negatives.py`)."""
    positives = []
    for f in faq:
        texts = list(dict.fromkeys((f["question"], *f["alternatives"])))
        positives += [(a, b) for i, a in enumerate(texts) for b in texts[i + 1 :]]
    rows = [{"text_a": a, "text_b": b, "label": 1, "source": "faq_kb_demo"} for a, b in positives]
    corpus = [t for f in faq for t in (f["question"], *f["alternatives"])]
    done: set[str] = set()
    for (anchor, _), mined in zip(
        positives, mine_hard_negatives(positives, corpus, hard_negatives), strict=True
    ):
        if anchor not in done:
            done.add(anchor)
            rows += [{"text_a": anchor, "text_b": t, "label": 0, "source": "faq_kb_demo_bm25"} for t in mined]
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.default_data", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, default=Path("data"))
    args = p.parse_args(argv)
    train = build_split("train", args.data, args.out)
    _write(args.out / "sentiment" / "train.jsonl", train)
    dev = build_split("dev", args.data, args.out, exclude={r["text"] for r in train})
    _write(args.out / "sentiment" / "dev.jsonl", dev)

    faq = [rec for _, rec in read_records(args.out / "faq_kb_demo" / "faq.jsonl")]
    _write(args.out / "intent" / "train.jsonl", intent_train_rows(args.out, faq))
    questions = {f["id"]: f["question"] for f in faq}
    train = [
        {**rec, "source": "atec_nlp_sim"}
        for _, rec in read_records(args.data / "atec_nlp_sim" / "train.jsonl")
    ]
    train += faq_train_rows(faq)
    dev = [
        {**rec, "source": "atec_nlp_sim"} for _, rec in read_records(args.data / "atec_nlp_sim" / "dev.jsonl")
    ]
    dev += [
        {"text_a": questions[q["faq_id"]], "text_b": q["query"], "label": 1, "source": "faq_kb_demo"}
        for _, q in read_records(args.out / "faq_kb_demo" / "queries_dev.jsonl")
        if q.get("faq_id")
    ]
    _write(args.out / "faq_pairs" / "train.jsonl", train)
    _write(args.out / "faq_pairs" / "dev.jsonl", dev)
    return 0


if __name__ == "__main__":
    sys.exit(main())
