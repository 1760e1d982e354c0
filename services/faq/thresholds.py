"""Answer / suggest thresholds for FAQ hits, calibrated on held-out user queries, stored per encoder version.

    python -m services.faq.thresholds --model model_repository/faq --intent model_repository/intent \\
        --kb data/faq_kb_demo/faq.jsonl --queries data/faq_kb_demo/queries_dev.jsonl --write

The gateway decides answer / suggest / clarify on the **answer confidence** (`services/faq/confidence.py`): the
probability that a hit is the right FAQ, from a logistic regression over its dense cosine, its margin over the
other candidates, the hybrid (dense + BM25) score, its rank, the agreement of its category with the predicted
intent and the words the message shares with the FAQ. This module fits that regression and chooses the thresholds on it:

1. calibration queries, none of them the chat set `make eval-chat` reports on:
   - every alternative phrasing (相似问) of the knowledge base, searched with it left out of the index
     (`--folds` folds: each fold's alternatives are removed from a fresh index and searched for), and
   - `--queries` (`{"query", "faq_id"}`, `faq_id: null` for questions the knowledge base cannot answer)
     against the whole knowledge base;
2. each query runs the search the gateway runs (same store type, mode `hybrid`, top 5) and, with `--intent`, the
   intent model; every hit is one example, right when it is the query's FAQ;
3. the regression is fitted on all of them (scikit-learn, offline only; the gateway applies the stored
   coefficients);
4. the thresholds are chosen on the `--tune` set when one is given (the labelled chat set
   `data/chat_eval/chat_dev.jsonl`: its answerable and unanswerable messages, which the regression never saw),
   else on 5-fold cross-validated probabilities of the calibration queries (folds by query):
   - answer:  the lowest P at which answering with the most probable FAQ is right for at least
              `answer_precision` (default 95 %) of the messages at or above it (unanswerable ones count wrong)
              and at which at most `max_unanswerable_answered` (default 8 %) of the messages the knowledge base
              cannot answer get an answer (the product's target is 10 %: precision alone lets a set with many
              answerable messages answer a sixth of the uncovered ones);
   - suggest: the lowest P at which the right FAQ is among the 3 most probable for at least
              `suggest_precision` of the messages at or above it (never above answer).

The left-out alternatives are harder than customer messages (a short phrasing searched against the FAQ's
other phrasings only, and neighbouring FAQs share words: 密码忘了 → 登录密码 or 支付密码?): 95 % precision on
them needs P ≥ 0.98, far stricter than on the chat set. They teach the regression how the signals combine;
the operating point is set where customers are.

`--write` stores the result under the version number in `<model>/thresholds.json`, beside config.yaml (versions
themselves are immutable): `score: "confidence"` with the coefficients under `confidence`. An entry without
them (`score: "cosine"`, written before) still works: its thresholds then apply to the top hit's cosine.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from services.faq.confidence import FEATURES, AnswerConfidence, candidate_features
from services.faq.domain import FaqEntry, FaqHit, read_faq_jsonl
from services.faq.records import DataError, read_records

THRESHOLDS_FILE = "thresholds.json"
TOP_K = 5  # the gateway's faq_top_k default: the candidates the confidence ranks
Classify = Callable[[Sequence[str]], list[tuple[str, float]]]  # texts -> (top intent, its probability)
OpenStore = Callable[[str, int, str], object]  # (name, dim, encoder version) -> an empty FaqStore


@dataclass(frozen=True)
class Thresholds:
    answer: float
    suggest: float
    answer_precision: float  # achieved where the thresholds were chosen (tuning set, or cross-validated)
    answer_coverage: float  # share of answerable queries answered directly and rightly
    suggest_precision: float
    suggest_coverage: float
    queries: int
    unanswerable: int
    encoder: str
    calibrated_on: str
    calibrated_at: str
    score: str = "cosine"  # what answer / suggest apply to: "cosine" (top hit) or "confidence" (P right)
    confidence: dict | None = None  # AnswerConfidence.to_dict() when score == "confidence"
    intent_model: str | None = None  # the intent model whose predictions the confidence was fitted with
    counts: dict = field(default_factory=dict)  # calibration queries by source
    unanswerable_answered: float | None = None  # share of the unanswerable messages at or above answer

    def answer_confidence(self) -> AnswerConfidence | None:
        return AnswerConfidence.from_dict(self.confidence) if self.score == "confidence" else None


def _shown(path) -> str:
    """`path` relative to the working directory when inside it: recorded files do not name the machine."""
    p = Path(path).resolve()
    return str(p.relative_to(Path.cwd())) if p.is_relative_to(Path.cwd()) else str(path)


def answering_at_most(scores: np.ndarray, share: float) -> float:
    """Smallest t (4 decimals) such that at most `share` of `scores` are >= t; 0.0 for no scores."""
    if len(scores) == 0:
        return 0.0
    allowed = math.floor(share * len(scores) + 1e-9)
    if allowed >= len(scores):
        return 0.0
    above = float(np.sort(scores)[::-1][allowed])  # the first score that must stay below t
    t = math.ceil(above * 1e4) / 1e4
    return min(1.0, t + 1e-4 if t <= above else t)


def lowest_threshold(scores: np.ndarray, good: np.ndarray, target: float) -> float:
    """Smallest t such that mean(good[scores >= t]) >= target; 1.0 (never) when no t reaches it."""
    order = np.argsort(-scores)
    precision = np.cumsum(good[order]) / np.arange(1, len(order) + 1)
    ok = np.flatnonzero(precision >= target)
    return float(scores[order][ok[-1]]) if len(ok) else 1.0


# ── calibration queries and their searches ──────────────────────────────────────────────────────────


@dataclass
class Query:
    text: str
    faq_id: str | None  # None: the knowledge base cannot answer it
    source: str  # "alternative" (left out of the index) or "queries"
    hits: list[FaqHit] = field(default_factory=list)
    intent: tuple[str, float] | None = None


def in_memory_store(name: str, dim: int, version: str):
    from services.faq.store import InMemoryFaqStore

    return InMemoryFaqStore(dim)


def milvus_lite_store(workdir: Path) -> OpenStore:
    """Stores as the gateway opens them (`FaqSettings`), each in an embedded milvus-lite file under `workdir`."""
    from services.faq.settings import FaqSettings

    def open_store(name: str, dim: int, version: str):
        settings = FaqSettings(
            uri=str(workdir / f"{name}.db"), collection_alias=name, embedder_dim=dim, embedder_version=version
        )
        return settings.open_store()

    return open_store


def _search_all(embedder, entries: list[FaqEntry], queries: list[Query], open_store: OpenStore, name: str):
    from services.faq.store import embed_entries

    store = open_store(name, embedder.dim, embedder.version)
    try:
        store.upsert(entries, embed_entries(embedder, entries))
        if flush := getattr(store, "flush", None):
            flush()
        vectors = embedder.embed([q.text for q in queries])
        for q, vec in zip(queries, vectors, strict=True):
            q.hits = list(store.search(q.text, vec, TOP_K, "hybrid"))
    finally:
        store.close()


def calibration_queries(
    embedder, entries: list[FaqEntry], rows: list[dict], open_store: OpenStore, folds: int
) -> list[Query]:
    """The knowledge base's alternatives (each searched with its fold left out) and the held-out queries."""
    out: list[Query] = []
    held = [(e.faq_id, i, alt) for e in entries for i, alt in enumerate(e.alternatives)]
    for fold in range(folds):
        mine = [(f, i, a) for n, (f, i, a) in enumerate(held) if n % folds == fold]
        if not mine:
            continue
        drop = {(f, i) for f, i, _ in mine}
        index = [
            e.model_copy(
                update={
                    "alternatives": [a for i, a in enumerate(e.alternatives) if (e.faq_id, i) not in drop]
                }
            )
            for e in entries
        ]
        queries = [Query(a, f, "alternative") for f, _, a in mine]
        _search_all(embedder, index, queries, open_store, f"calib_fold{fold}")
        out += queries
    queries = [Query(r["query"], r.get("faq_id") or None, "queries") for r in rows]
    _search_all(embedder, entries, queries, open_store, "calib_full")
    return out + queries


def tuning_queries(path: Path, known: set[str]) -> list[Query]:
    """The answerable and unanswerable messages of a chat set (`{"text", "kind", "faq_id"}` rows)."""
    out = []
    for n, rec in read_records(path):
        if rec.get("kind") not in ("answerable", "unanswerable"):
            continue
        faq_id = rec.get("faq_id") or None
        if faq_id is not None and faq_id not in known:
            raise DataError(f"{path}:{n}: faq_id {faq_id} is not in the knowledge base")
        out.append(Query(str(rec.get("text", "")), faq_id, "tune"))
    if not out:
        raise DataError(f"{path}: no answerable or unanswerable messages")
    return out


def examples(queries: list[Query]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features [hits, F], right [hits], query index [hits]) over every hit of every query."""
    xs, ys, groups = [], [], []
    for n, q in enumerate(queries):
        if not q.hits:
            continue
        label, conf = q.intent if q.intent else (None, 0.0)
        xs.append(candidate_features(q.hits, q.text, label, conf))
        ys += [h.faq_id == q.faq_id for h in q.hits]
        groups += [n] * len(q.hits)
    return np.concatenate(xs), np.array(ys, float), np.array(groups)


def fit_confidence(x: np.ndarray, y: np.ndarray, groups: np.ndarray, cv: int = 5):
    """The regression on all examples and cross-validated probabilities (folds by query). Offline only."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def model():
        return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))

    held_out = cross_val_predict(model(), x, y, groups=groups, cv=GroupKFold(cv), method="predict_proba")[
        :, 1
    ]
    fitted = model().fit(x, y)
    scaler, lr = fitted[0], fitted[1]
    weights = lr.coef_[0] / scaler.scale_  # back to the raw feature scale
    bias = float(lr.intercept_[0] - (lr.coef_[0] * scaler.mean_ / scaler.scale_).sum())
    return AnswerConfidence(tuple(float(w) for w in weights), bias, FEATURES), held_out


def choose(
    queries: list[Query],
    probs: np.ndarray,
    groups: np.ndarray,
    answer_precision: float,
    suggest_precision: float,
    max_unanswerable_answered: float = 1.0,
) -> dict:
    """Thresholds on P for answer and suggest, and what they achieve on `queries` with `probs`."""
    best, right1, right3 = [], [], []
    for n, q in enumerate(queries):
        p = probs[groups == n]
        if len(p) == 0:
            best.append(0.0), right1.append(False), right3.append(False)
            continue
        order = np.argsort(-p, kind="stable")
        ids = [q.hits[i].faq_id for i in order]
        best.append(float(p[order[0]]))
        right1.append(ids[0] == q.faq_id)
        right3.append(q.faq_id in ids[:3])
    best_a, r1, r3 = np.array(best), np.array(right1), np.array(right3)
    answerable = np.array([q.faq_id is not None for q in queries], dtype=bool)
    # stored with 4 decimals, rounded down: the stored threshold admits what the precision was measured on
    answer = math.floor(lowest_threshold(best_a, r1.astype(float), answer_precision) * 1e4) / 1e4
    answer = max(answer, answering_at_most(best_a[~answerable], max_unanswerable_answered))
    suggest = min(
        answer, math.floor(lowest_threshold(best_a, r3.astype(float), suggest_precision) * 1e4) / 1e4
    )

    def share(mask):
        return round(float(mask.mean()), 4) if len(mask) else 0.0

    return {
        "answer": answer,
        "suggest": suggest,
        "answer_precision": share(r1[best_a >= answer]),
        "answer_coverage": share((best_a >= answer)[answerable] & r1[answerable]),
        "suggest_precision": share(r3[best_a >= suggest]),
        "suggest_coverage": share((best_a >= suggest)[answerable] & r3[answerable]),
        "unanswerable_answered": share((best_a >= answer)[~answerable]),
    }


def calibrate(
    embedder,
    kb_path: Path,
    queries_path: Path,
    answer_precision: float = 0.95,
    suggest_precision: float = 0.8,
    max_unanswerable_answered: float = 0.08,
    *,
    classify: Classify | None = None,
    intent_model: str | None = None,
    open_store: OpenStore = in_memory_store,
    folds: int = 4,
    tune_path: Path | None = None,
) -> Thresholds:
    entries = read_faq_jsonl(kb_path)
    rows = [rec for _, rec in read_records(queries_path)]
    if not rows:
        raise DataError(f"{queries_path}: no queries")
    known = {e.faq_id for e in entries}
    if unknown := sorted({r["faq_id"] for r in rows if r.get("faq_id") and r["faq_id"] not in known}):
        raise DataError(f"{queries_path}: faq_id(s) not in the knowledge base: {unknown[:5]}")
    queries = calibration_queries(embedder, entries, rows, open_store, folds)
    tune: list[Query] = []
    if tune_path is not None:
        tune = tuning_queries(tune_path, known)
        _search_all(embedder, entries, tune, open_store, "calib_tune")
    if classify is not None:
        for q, pred in zip(queries + tune, classify([q.text for q in queries + tune]), strict=True):
            q.intent = pred
    x, y, groups = examples(queries)
    confidence, held_out = fit_confidence(x, y, groups)
    if tune:
        tx, _, tgroups = examples(tune)
        probs = 1.0 / (1.0 + np.exp(-(tx @ np.asarray(confidence.weights) + confidence.bias)))
        chosen = choose(tune, probs, tgroups, answer_precision, suggest_precision, max_unanswerable_answered)
    else:
        chosen = choose(
            queries, held_out, groups, answer_precision, suggest_precision, max_unanswerable_answered
        )
    sources = [q.source for q in queries + tune]
    where = f"{_shown(kb_path)} (alternatives left out, {folds} folds) + {_shown(queries_path)}"
    if tune_path is not None:
        where += f"; thresholds on {_shown(tune_path)}"
    chosen_on = tune or queries
    return Thresholds(
        **chosen,
        queries=len(chosen_on),
        unanswerable=sum(q.faq_id is None for q in chosen_on),
        encoder=embedder.version,
        calibrated_on=where,
        calibrated_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        score="confidence",
        confidence=confidence.to_dict(),
        intent_model=intent_model,
        counts={s: sources.count(s) for s in sorted(set(sources))},
    )


# ── the intent model, run in-process ────────────────────────────────────────────────────────────────


def local_classifier(version) -> Classify:
    """The exported intent model through Paddle Inference: texts -> (top label, probability)."""
    from services.runtime.runner import PaddleRunner, RunnerSettings

    runner = PaddleRunner(version, RunnerSettings(cpu_threads=2))
    tokenizer = version.tokenizer()
    labels = version.labels or list(version.config.labels)

    def classify(texts: Sequence[str]) -> list[tuple[str, float]]:
        out = []
        ids = tokenizer.encode_ids(list(texts))
        for start in range(0, len(ids), 64):
            probs = runner.run(tokenizer.pad(ids[start : start + 64]))["probs"]
            out += [(labels[int(p.argmax())], float(p.max())) for p in probs]
        return out

    return classify


# ── thresholds.json ─────────────────────────────────────────────────────────────────────────────────


def write(model_dir: Path, version: int, thresholds: Thresholds) -> Path:
    path = model_dir / THRESHOLDS_FILE
    data = json.loads(path.read_text("utf-8")) if path.is_file() else {"versions": {}}
    data["versions"][str(version)] = asdict(thresholds)
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", "utf-8")
    return path


def load(model_dir: Path, version: int) -> Thresholds | None:
    """The calibration of `version`; None when there is none. A malformed entry raises ValueError."""
    path = model_dir / THRESHOLDS_FILE
    if not path.is_file():
        return None
    entry = json.loads(path.read_text("utf-8"))["versions"].get(str(version))
    if not entry:
        return None
    result = Thresholds(**entry)
    result.answer_confidence()  # validates the coefficients
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m services.faq.thresholds", description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "--model", type=Path, default=Path("model_repository/faq"), help="FAQ encoder (model or version)"
    )
    p.add_argument(
        "--intent", type=Path, default=Path("model_repository/intent"), help="intent model ('' = none)"
    )
    p.add_argument("--kb", type=Path, default=Path("data/faq_kb_demo/faq.jsonl"))
    p.add_argument("--queries", type=Path, default=Path("data/faq_kb_demo/queries_dev.jsonl"))
    p.add_argument("--answer-precision", type=float, default=0.95)
    p.add_argument("--suggest-precision", type=float, default=0.8)
    p.add_argument(
        "--max-unanswerable-answered",
        type=float,
        default=0.08,
        help="answer threshold: at most this share of the unanswerable messages answered",
    )
    p.add_argument("--folds", type=int, default=4, help="folds of left-out alternatives")
    p.add_argument(
        "--tune", type=Path, default=None, help="chat set the thresholds are chosen on (data/chat_eval/...)"
    )
    p.add_argument(
        "--write", action="store_true", help=f"store under the version in <model>/{THRESHOLDS_FILE}"
    )
    args = p.parse_args(argv)
    from services.faq.embedders import LocalEmbedder
    from services.faq.records import open_version
    from services.runtime.repository import RepositoryError

    try:
        version = open_version(args.model)
        classify, intent_model = None, None
        if str(args.intent) not in ("", "."):
            intent = open_version(args.intent)
            classify, intent_model = local_classifier(intent), f"{intent.name}-v{intent.version}"
        with tempfile.TemporaryDirectory(prefix="kefu-thresholds-") as tmp:
            result = calibrate(
                LocalEmbedder(version),
                args.kb,
                args.queries,
                args.answer_precision,
                args.suggest_precision,
                args.max_unanswerable_answered,
                classify=classify,
                intent_model=intent_model,
                open_store=milvus_lite_store(Path(tmp)),
                folds=args.folds,
                tune_path=args.tune,
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
