"""Readers for the FAQ tools' inputs (`services.faq.thresholds`, `services.faq.evaluate`): JSONL / CSV rows with
clear errors, matching pairs, and a model path given on the command line.

Serving code, so it lives here: images copy only `services/`, and serving never imports training code
(`models/`, `export/`); `models.corpus` and `models.evaluate` re-use these (training may import serving code).

Matching pairs: {"text_a": str, "text_b": str, "label": 0|1} (JSONL, or CSV/TSV with a header); extra fields
are ignored.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.runtime.repository import ModelVersion

MAX_REPORTED = 5


class DataError(ValueError):
    """Training or evaluation input cannot be used; the message names the file, the line and the problem."""


@dataclass(frozen=True)
class PairExample:
    text_a: str
    text_b: str
    label: int


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


def text_field(rec: dict, field: str) -> str | None:
    """The stripped string in `rec[field]`, or None when it is missing, not a string or blank."""
    value = rec.get(field)
    if not isinstance(value, str) or not value.strip():
        return None
    return value.strip()


def raise_problems(path: Path, problems: list[str], total: int) -> None:
    """One DataError naming the first MAX_REPORTED invalid rows, when there are any."""
    if problems:
        more = f" (and {len(problems) - MAX_REPORTED} more)" if len(problems) > MAX_REPORTED else ""
        raise DataError(
            f"{path}: {len(problems)} of {total} rows are invalid{more}:\n  "
            + "\n  ".join(problems[:MAX_REPORTED])
        )


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
        a, b = text_field(rec, "text_a"), text_field(rec, "text_b")
        if a is None or b is None:
            problems.append(f"line {lineno}: fields 'text_a' and 'text_b' must be non-empty strings")
            continue
        label = str(rec["label"]).strip()
        if label not in ("0", "1"):
            problems.append(f"line {lineno}: label must be 0 or 1, got {rec['label']!r}")
            continue
        examples.append(PairExample(a, b, int(label)))
    raise_problems(path, problems, len(records))
    return examples


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


def open_version(path: Path) -> ModelVersion:
    """A model folder (with config.yaml: its serving version) or one of its numbered version folders.

    The repository module (and its tokenizer) is imported here, not at the top: the gateway imports this
    module through `thresholds` and needs only the readers."""
    from services.runtime.repository import ModelRepository, RepositoryError

    path = path.resolve()
    if (path / "config.yaml").is_file():
        return ModelRepository(path.parent).open(path.name)
    if path.name.isdigit() and (path.parent / "config.yaml").is_file():
        return ModelRepository(path.parent.parent).open(path.parent.name, int(path.name))
    raise RepositoryError(f"{path}: neither a model folder (with config.yaml) nor one of its version folders")
