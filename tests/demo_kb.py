"""Sizes of the shipped demo knowledge base and its query sets, counted from the data files themselves (raw JSON,
not through the FAQ loader), so tests follow the data when someone adds an FAQ or a query instead of hard-coding
91 / 335 / 426 / 224 / 42 in a dozen places."""

from __future__ import annotations

import json
from pathlib import Path

KB_DIR = Path(__file__).resolve().parent.parent / "data" / "faq_kb_demo"


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


_FAQS = _rows(KB_DIR / "faq.jsonl")
_QUERIES = _rows(KB_DIR / "queries_dev.jsonl")

FAQS = len(_FAQS)  # standard questions (one FAQ each)
ALTERNATIVES = sum(len(f.get("alternatives") or []) for f in _FAQS)  # 相似问 over all FAQs
ROWS = FAQS + ALTERNATIVES  # store rows: one per standard question and one per alternative
QUERIES = len(_QUERIES)  # queries_dev.jsonl rows
UNANSWERABLE = sum(not q.get("faq_id") for q in _QUERIES)  # of which have no FAQ (faq_id null)
