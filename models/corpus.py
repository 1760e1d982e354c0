"""Reading labelled data in the formats of the shared datasets, with clear errors for bad input.

Classification: {"text": str, "label": str}            (JSONL, or CSV with a `text,label` header)
Matching:       {"text_a": str, "text_b": str, "label": 0|1}
Extra fields are ignored.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

MAX_REPORTED = 5


class DataError(ValueError):
    """Training or evaluation input cannot be used; the message names the file, the line and the problem."""


@dataclass(frozen=True)
class TextExample:
    text: str
    label: str


@dataclass(frozen=True)
class PairExample:
    text_a: str
    text_b: str
    label: int


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_records(path: str | Path) -> list[tuple[int, dict]]:
    """(line number, record) for every row of a .jsonl/.json-lines or .csv/.tsv file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    raw = path.read_text(encoding="utf-8-sig")
    if not raw.strip():
        raise DataError(f"{path}: file is empty")
    records: list[tuple[int, dict]] = []
    if path.suffix.lower() in (".csv", ".tsv"):
        reader = csv.DictReader(raw.splitlines(), delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        for lineno, row in enumerate(reader, start=2):
            records.append((lineno, {k.strip(): v for k, v in row.items() if k is not None}))
    else:
        for lineno, line in enumerate(raw.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from e
            if not isinstance(rec, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
            records.append((lineno, rec))
    if not records:
        raise DataError(f"{path}: no rows")
    return records


def _text_field(rec: dict, field: str) -> str | None:
    value = rec.get(field)
    if not isinstance(value, str) or not value.strip():
        return None
    return value.strip()


def _raise_problems(path: Path, problems: list[str], total: int) -> None:
    if problems:
        more = f" (and {len(problems) - MAX_REPORTED} more)" if len(problems) > MAX_REPORTED else ""
        raise DataError(
            f"{path}: {len(problems)} of {total} rows are invalid{more}:\n  "
            + "\n  ".join(problems[:MAX_REPORTED])
        )


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
        text = _text_field(rec, "text")
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
    _raise_problems(path, problems, len(records))
    return examples


def load_pairs(path: str | Path) -> list[PairExample]:
    """Rows with non-empty `text_a`, `text_b` and a `label` of 0 or 1."""
    path = Path(path)
    records = read_records(path)
    examples, problems = [], []
    for lineno, rec in records:
        missing = [f for f in ("text_a", "text_b", "label") if f not in rec]
        if missing:
            problems.append(f"line {lineno}: missing field(s) {', '.join(missing)}")
            continue
        a, b = _text_field(rec, "text_a"), _text_field(rec, "text_b")
        if a is None or b is None:
            problems.append(f"line {lineno}: fields 'text_a' and 'text_b' must be non-empty strings")
            continue
        label = str(rec["label"]).strip()
        if label not in ("0", "1"):
            problems.append(f"line {lineno}: label must be 0 or 1, got {rec['label']!r}")
            continue
        examples.append(PairExample(a, b, int(label)))
    _raise_problems(path, problems, len(records))
    return examples


def label_set(examples: list[TextExample]) -> list[str]:
    return sorted({e.label for e in examples})


def retrieval_split(pairs: list[PairExample]) -> tuple[list[str], list[str], list[int]]:
    """Knowledge base = distinct text_a of positive pairs; queries = their text_b, with the index of the gold entry.

    A query text that is positive for several entries keeps its first pairing (the evaluation is then
    slightly pessimistic, never optimistic).
    """
    kb: list[str] = []
    kb_index: dict[str, int] = {}
    queries, gold, seen = [], [], set()
    for p in pairs:
        if p.label != 1:
            continue
        if p.text_a not in kb_index:
            kb_index[p.text_a] = len(kb)
            kb.append(p.text_a)
        if p.text_b in seen:
            continue
        seen.add(p.text_b)
        queries.append(p.text_b)
        gold.append(kb_index[p.text_a])
    if not kb:
        raise DataError("no positive pairs (label 1): cannot build a retrieval evaluation")
    return kb, queries, gold
