"""Regenerate the training data shipped in data/ for the default sentiment and FAQ-encoder models.

    python -m models.default_data --data ../shared/data --out data

data/sentiment/{train,dev}.jsonl  = waimai_10k + online_shopping_10_cats (train / dev splits), with `source`
data/faq_pairs/{train,dev}.jsonl  = atec_nlp_sim pairs (train / dev) + pairs from the demo FAQ knowledge base:
                                    (standard question, alternative phrasing) in train,
                                    (standard question, held-out user query) in dev.
BQ corpus is not shipped: its terms allow academic research use on application only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from models.corpus import read_records


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{path}: {len(rows)} rows")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.default_data", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, default=Path("data"))
    args = p.parse_args(argv)
    for split in ("train", "dev"):
        rows = []
        for source in ("waimai_10k", "online_shopping_10_cats"):
            for _, rec in read_records(args.data / source / f"{split}.jsonl"):
                rows.append({"text": rec["text"], "label": rec["label"], "source": source})
        _write(args.out / "sentiment" / f"{split}.jsonl", rows)

    faq = [rec for _, rec in read_records(args.out / "faq_kb_demo" / "faq.jsonl")]
    questions = {f["id"]: f["question"] for f in faq}
    train = [
        {**rec, "source": "atec_nlp_sim"}
        for _, rec in read_records(args.data / "atec_nlp_sim" / "train.jsonl")
    ]
    train += [
        {"text_a": f["question"], "text_b": alt, "label": 1, "source": "faq_kb_demo"}
        for f in faq
        for alt in f["alternatives"]
    ]
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
