"""Answer / suggest thresholds for FAQ hits, calibrated on held-out user queries, stored per encoder version.

    python -m services.faq.thresholds --model model_repository/faq \\
        --kb data/faq_kb_demo/faq.jsonl --queries data/faq_kb_demo/queries_dev.jsonl --write

Queries are `{"query", "faq_id"}` with `faq_id: null` for questions the knowledge base cannot answer. The score
is the cosine between the query and the best-matching phrasing (standard or alternative) of the top FAQ,
the `cosine` every dense / hybrid `FaqHit` carries.

- answer:  the lowest cosine at which answering with the top FAQ is right for at least `answer_precision` of
           the queries at or above it (unanswerable queries count as wrong);
- suggest: the lowest cosine at which the right FAQ is among the top 3 for at least `suggest_precision` of the
           queries at or above it.

`--write` stores the result under the version number in `<model>/thresholds.json`, beside config.yaml (versions
themselves are immutable), so a new encoder version needs its own calibration and a KB change can be
re-calibrated without a new export.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from services.faq.domain import read_faq_jsonl
from services.faq.records import DataError, read_records

THRESHOLDS_FILE = "thresholds.json"


@dataclass(frozen=True)
class Thresholds:
    answer: float
    suggest: float
    answer_precision: float  # achieved on the calibration queries
    answer_coverage: float  # share of answerable queries answered directly
    suggest_precision: float
    suggest_coverage: float
    queries: int
    unanswerable: int
    encoder: str
    calibrated_on: str
    calibrated_at: str


def _shown(path) -> str:
    """`path` relative to the working directory when inside it: recorded files do not name the machine."""
    p = Path(path).resolve()
    return str(p.relative_to(Path.cwd())) if p.is_relative_to(Path.cwd()) else str(path)


def lowest_threshold(scores: np.ndarray, good: np.ndarray, target: float) -> float:
    """Smallest t such that mean(good[scores >= t]) >= target; 1.0 (never) when no t reaches it."""
    order = np.argsort(-scores)
    precision = np.cumsum(good[order]) / np.arange(1, len(order) + 1)
    ok = np.flatnonzero(precision >= target)
    return float(scores[order][ok[-1]]) if len(ok) else 1.0


def calibrate(
    embedder, kb_path: Path, queries_path: Path, answer_precision=0.9, suggest_precision=0.8
) -> Thresholds:
    entries = read_faq_jsonl(kb_path)
    phrasing_faq, phrasings = [], []
    for e in entries:
        for text in e.phrasings:
            phrasings.append(text)
            phrasing_faq.append(e.faq_id)
    rows = [rec for _, rec in read_records(queries_path)]
    if not rows:
        raise DataError(f"{queries_path}: no queries")
    known = {e.faq_id for e in entries}
    if unknown := sorted({r["faq_id"] for r in rows if r.get("faq_id") and r["faq_id"] not in known}):
        raise DataError(f"{queries_path}: faq_id(s) not in the knowledge base: {unknown[:5]}")
    sims = embedder.embed([r["query"] for r in rows]) @ embedder.embed(phrasings).T
    faq_ids = sorted(known)
    column = {f: i for i, f in enumerate(faq_ids)}
    per_faq = np.full((len(rows), len(faq_ids)), -1.0)
    for j, f in enumerate(phrasing_faq):  # best phrasing per FAQ
        per_faq[:, column[f]] = np.maximum(per_faq[:, column[f]], sims[:, j])
    top = np.argsort(-per_faq, axis=1)[:, :3]
    best = per_faq[np.arange(len(rows)), top[:, 0]]
    gold = np.array([column.get(r.get("faq_id"), -1) for r in rows])
    right_top1 = top[:, 0] == gold
    right_top3 = (top == gold[:, None]).any(axis=1)
    answer = lowest_threshold(best, right_top1.astype(float), answer_precision)
    suggest = min(answer, lowest_threshold(best, right_top3.astype(float), suggest_precision))
    answerable = gold >= 0

    def share(mask):
        return round(float(mask.mean()), 4) if len(mask) else 0.0

    return Thresholds(
        answer=round(answer, 4),
        suggest=round(suggest, 4),
        answer_precision=share(right_top1[best >= answer]),
        answer_coverage=share((best >= answer)[answerable] & right_top1[answerable]),
        suggest_precision=share(right_top3[best >= suggest]),
        suggest_coverage=share((best >= suggest)[answerable] & right_top3[answerable]),
        queries=len(rows),
        unanswerable=int((~answerable).sum()),
        encoder=embedder.version,
        calibrated_on=f"{_shown(kb_path)} + {_shown(queries_path)}",
        calibrated_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )


def write(model_dir: Path, version: int, thresholds: Thresholds) -> Path:
    path = model_dir / THRESHOLDS_FILE
    data = json.loads(path.read_text("utf-8")) if path.is_file() else {"versions": {}}
    data["versions"][str(version)] = asdict(thresholds)
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", "utf-8")
    return path


def load(model_dir: Path, version: int) -> Thresholds | None:
    path = model_dir / THRESHOLDS_FILE
    if not path.is_file():
        return None
    entry = json.loads(path.read_text("utf-8"))["versions"].get(str(version))
    return Thresholds(**entry) if entry else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m services.faq.thresholds", description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "--model", type=Path, default=Path("model_repository/faq"), help="FAQ encoder (model or version)"
    )
    p.add_argument("--kb", type=Path, default=Path("data/faq_kb_demo/faq.jsonl"))
    p.add_argument("--queries", type=Path, default=Path("data/faq_kb_demo/queries_dev.jsonl"))
    p.add_argument("--answer-precision", type=float, default=0.9)
    p.add_argument("--suggest-precision", type=float, default=0.8)
    p.add_argument(
        "--write", action="store_true", help=f"store under the version in <model>/{THRESHOLDS_FILE}"
    )
    args = p.parse_args(argv)
    from services.faq.embedders import LocalEmbedder
    from services.faq.records import open_version
    from services.runtime.repository import RepositoryError

    try:
        version = open_version(args.model)
        result = calibrate(
            LocalEmbedder(version), args.kb, args.queries, args.answer_precision, args.suggest_precision
        )
    except (DataError, RepositoryError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(asdict(result), ensure_ascii=False, indent=2))
    if args.write:
        print(f"written: {write(version.model_dir, version.version, result)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
