"""Reading labelled data in the formats of the shared datasets, with clear errors for bad input.

Classification: {"text": str, "label": str}            (JSONL, or CSV with a `text,label` header)
Matching:       {"text_a": str, "text_b": str, "label": 0|1}
Extra fields are ignored.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

# The readers the serving tools need (pairs, records, DataError) live on the serving side, which never imports
# training code: import them from services.faq.records.
from services.faq.records import raise_problems, read_records, text_field


@dataclass(frozen=True)
class TextExample:
    text: str
    label: str


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_classification(path: str | Path, labels: list[str] | None = None) -> list[TextExample]:
    """Rows with a non-empty `text` and a `label`; with `labels`, every label must be one of them."""
    path = Path(path)
    records = read_records(path)
    allowed = set(labels) if labels is not None else None
    examples, problems = [], []
    for lineno, rec in records:
        missing = [f for f in ("text", "label") if f not in rec]
        if missing:
            problems.append(f"line {lineno}: missing field(s) {', '.join(missing)}")
            continue
        text = text_field(rec, "text")
        label = rec["label"]
        if text is None:
            problems.append(f"line {lineno}: field 'text' must be a non-empty string")
            continue
        if not isinstance(label, str | int) or isinstance(label, bool) or str(label).strip() == "":
            problems.append(f"line {lineno}: field 'label' must be a non-empty string")
            continue
        label = str(label).strip()
        if allowed is not None and label not in allowed:
            problems.append(f"line {lineno}: unknown label {label!r} (known: {', '.join(sorted(allowed))})")
            continue
        examples.append(TextExample(text, label))
    raise_problems(path, problems, len(records))
    return examples


def label_set(examples: list[TextExample]) -> list[str]:
    return sorted({e.label for e in examples})
