"""`make eval-faq DATA=FILE.jsonl [MODEL=DIR]`: dense vs BM25 vs hybrid retrieval through the real store.

Knowledge base = the distinct `text_a` of the positive pairs in FILE, queries = their `text_b` (as in
`models.evaluate`). Every KB text becomes a one-phrasing FAQ in a fresh embedded milvus-lite collection (BM25 on
jieba words), the queries are embedded with the exported FAQ encoder, and each mode is asked for its top 10.
Prints one JSON object {"dense": {...}, "bm25": {...}, "hybrid": {...}} with recall_at_1/5/10 and mrr (MRR@10).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from services.faq.domain import FaqEntry, phrasing_key
from services.faq.embedders import LocalEmbedder
from services.faq.milvus_store import MilvusFaqStore
from services.faq.records import DataError, load_pairs, open_version, retrieval_split
from services.runtime.repository import RepositoryError

MODES = ("dense", "bm25", "hybrid")


def rank_report(ranks: list[int | None]) -> dict:
    """Ranks are 1-based positions of the gold FAQ in the top 10, None when absent (reciprocal rank 0)."""
    r = np.array([x if x is not None else 10**9 for x in ranks])
    report = {f"recall_at_{k}": round(float((r <= k).mean()), 4) for k in (1, 5, 10)}
    report["mrr"] = round(float(np.where(r <= 10, 1.0 / r, 0.0).mean()), 4)
    return report


def merge_equivalent(kb: list[str], gold: list[int]) -> tuple[list[str], list[int]]:
    """The store treats phrasings equal up to case, width, spaces and punctuation as one ("怎么记息" and
    ".怎么记息"): such KB texts become one entry, and their queries point at it."""
    canonical: dict[str, int] = {}
    remap, merged = [], []
    for text in kb:
        key = phrasing_key(text)
        if key not in canonical:
            canonical[key] = len(merged)
            merged.append(text)
        remap.append(canonical[key])
    return merged, [remap[g] for g in gold]


def evaluate_store(kb: list[str], queries: list[str], gold: list[int], embedder, workdir: Path) -> dict:
    kb, gold = merge_equivalent(kb, gold)
    entries = [FaqEntry(faq_id=f"kb-{i:05d}", question=text, answer=text) for i, text in enumerate(kb)]
    store = MilvusFaqStore(
        str(workdir / "eval.db"), "faq_eval", embedder.dim, embedder_version=embedder.version
    )
    try:
        vectors = embedder.embed(kb)
        for start in range(0, len(entries), 500):
            store.upsert(entries[start : start + 500], [v[None, :] for v in vectors[start : start + 500]])
        query_vectors = embedder.embed(queries)
        results, timings = {}, {}
        for mode in MODES:
            ranks, started = [], time.perf_counter()
            for text, vec, g in zip(queries, query_vectors, gold, strict=True):
                hits = store.search(text, vec, top_k=10, mode=mode)
                ids = [h.faq_id for h in hits]
                target = f"kb-{g:05d}"
                ranks.append(ids.index(target) + 1 if target in ids else None)
            timings[mode] = round((time.perf_counter() - started) * 1000 / len(queries), 2)
            results[mode] = {**rank_report(ranks), "ms_per_query": timings[mode]}
        results["store"] = store.health()
        results["kb_size"] = len(kb)
        return results
    finally:
        store.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m services.faq.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="matching pairs {text_a, text_b, label}")
    p.add_argument("--model", type=Path, default=Path("model_repository/faq"), help="exported FAQ encoder")
    args = p.parse_args(argv)

    try:
        if args.data.is_dir():
            raise DataError(
                f"{args.data} is a folder: pass a pairs file, e.g. DATA=../shared/data/atec_nlp_sim/dev.jsonl"
            )
        kb, queries, gold = retrieval_split(load_pairs(args.data))
        embedder = LocalEmbedder(open_version(args.model))
    except (DataError, RepositoryError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="kefu-eval-faq-") as tmp:
        results = evaluate_store(kb, queries, gold, embedder, Path(tmp))
    out = {m: results[m] for m in MODES}
    out["meta"] = {
        "data": str(args.data),
        "encoder": embedder.version,
        "kb_size": len(kb),
        "kb_entries": results["kb_size"],  # after merging texts the store treats as one phrasing
        "queries": len(queries),
        "bm25_supported": results["store"].get("bm25_supported"),
    }
    print(json.dumps(out, ensure_ascii=False, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
