"""FAQ search benchmark: the project's `MilvusFaqStore` on embedded milvus-lite vs a real Milvus 2.3 server.

    python -m bench.faq_bench [--entries 1000,10000,100000] [--backends milvus-lite,milvus-server]
        [--queries 500] [--top-k 5] [--alternatives 3] [--warmup 20] [--server-consistency Session,Strong,Bounded]

Backends:
  milvus-lite    embedded in this process (`milvus-lite` 3.2.2, a temporary .db file per size); dense and hybrid
                 (dense + BM25, RRF) searches.
  milvus-server  Milvus 2.3.5 standalone from PyPI `milvus==2.3.5` (dev dependency), started here in a temporary
                 directory inside a private network namespace that holds only loopback (bench/milvus_server.py:
                 Milvus listens on every interface, the namespace keeps that to 127.0.0.1); dense searches only:
                 Milvus 2.3 has no BM25, the store detects it and runs dense-only (hybrid = dense there).
                 If it cannot start, the reason is printed and milvus-lite alone is measured. Measured at the
                 store's default read consistency (Session: the loading process's writes are visible,
                 no wait) and at Strong (waits for the server's time tick on every search) and Bounded.

Knowledge base: `--entries` synthetic FAQs recombined from the demo knowledge base (data/faq_kb_demo): FAQ i
takes demo FAQ i mod 91 and prefixes its question and up to `--alternatives` alternatives with a product name and
the number i (every phrasing unique), so each FAQ is 1 + alternatives rows. Vectors come from the deterministic
test embedder (`services/faq/testing.HashingEmbedder`) at the real encoder's dim (128), so 100k FAQs embed in
half a minute: search latency depends on dim, row count and index, not on what the vectors mean. Rows are loaded with
`bulk_insert` (what a re-index does), flushed, and the dense index waited for before measuring.

Queries: `--queries` texts, half the demo's real dev queries (data/faq_kb_demo/queries_dev.jsonl, incl. ones
with no answer), half re-worded phrasings of random synthetic FAQs; embedded before timing. Each measurement is
a sequential closed loop, one client, `--warmup` searches not counted, then every query once through
`store.search(text, vector, top_k, mode)`: p50 / p99 latency and qps (queries / wall time).

Prints a table and the milvus-server / milvus-lite dense p50 (and qps) ratio per size; writes
`bench/results/faq-<timestamp>.json`: `{"rows": [{"backend", "entries", "mode", "consistency", "p50_ms",
"p99_ms", "qps"}], "ratios": [...], "runs": [...details: rows, insert time, index...], "notes": [...], ...}`.
Loading is the slow part: milvus-lite inserts about 3k rows/s with BM25 here (100k FAQs = 400k
rows, a few minutes). Other load on the machine skews the figures: the load average is recorded before and
after.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BACKENDS = ("milvus-lite", "milvus-server")
TIMEOUT_S = 120.0  # per Milvus call; --timeout-s. The store's 10 s default: a milvus-lite insert of 500 rows
# took longer than that at ~120k rows on a loaded 2-core machine (sealing / index building)
DIM = 128
PRODUCTS = (
    "蓝牙耳机", "保温杯", "运动鞋", "羽绒服", "扫地机器人", "电饭煲", "面膜", "儿童书包", "机械键盘", "空气炸锅",
    "瑜伽垫", "行李箱", "电动牙刷", "咖啡机", "智能手表", "床上四件套", "洗面奶", "登山包", "台灯", "充电宝",
)  # fmt: skip
LEADS = ("请问", "你好，", "想问下", "麻烦问一下", "客服，", "亲，")
NOTES = [
    "vectors come from the deterministic test embedder (HashingEmbedder, dim 128), not the trained encoder: "
    "latency depends on dim, row count and index, not on vector content",
    "milvus-server is Milvus 2.3.5 (PyPI milvus==2.3.5): no BM25 there, so the store is dense-only and hybrid "
    "requests run dense; hybrid (dense + BM25, RRF) is measured on milvus-lite only",
    "sequential closed loop, one client, in-process store calls (no HTTP); query embedding is not timed",
    "consistency: milvus-lite is always read-your-writes (reported as Session, the store's default); on "
    "milvus-server Session sees this process's writes at once, Strong waits for the server's time tick on every "
    "search, Bounded (KEFU_FAQ_CONSISTENCY_LEVEL) may read seconds-old data",
]


def log(msg: str) -> None:
    print(msg, flush=True)


# ── data ────────────────────────────────────────────────────────────────────────────────────────────


def synthetic_kb(n: int, alternatives: int):
    from services.faq.domain import FaqEntry
    from services.faq.testing import load_demo_kb

    base = load_demo_kb()
    out = []
    for i in range(n):
        b = base[i % len(base)]
        tag = f"{PRODUCTS[(i // len(base)) % len(PRODUCTS)]}{i}"
        out.append(
            FaqEntry(
                faq_id=f"syn-{i:06d}",
                question=f"{tag}：{b.question}",
                answer=b.answer,
                category=b.category,
                alternatives=[f"{tag}：{a}" for a in b.alternatives[:alternatives]],
                tags=[*b.tags[:2], PRODUCTS[(i // len(base)) % len(PRODUCTS)]],
                updated_at=b.updated_at,
            )
        )
    return out


def sample_queries(entries, n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    dev = Path(__file__).resolve().parents[1] / "data" / "faq_kb_demo" / "queries_dev.jsonl"
    real = [json.loads(line)["query"] for line in dev.read_text("utf-8").splitlines() if line.strip()]
    out = []
    for i in range(n):
        if i % 2 == 0:
            out.append(rng.choice(real))
        else:
            e = rng.choice(entries)
            out.append(rng.choice(LEADS) + rng.choice(e.phrasings))
    return out


def embed_all(embedder, entries, batch: int = 4096) -> list[np.ndarray]:
    from services.faq.store import embed_entries

    total = sum(len(e.phrasings) for e in entries)
    out, done, step = [], 0, max(1, len(entries) // 10)
    started = time.perf_counter()
    for i in range(0, len(entries), step):
        part = entries[i : i + step]
        out.extend(embed_entries(embedder, part, batch))
        done += sum(len(e.phrasings) for e in part)
        log(f"  embedding {done:,}/{total:,} phrasings ({time.perf_counter() - started:.0f} s)")
    return out


# ── one backend at one size ─────────────────────────────────────────────────────────────────────────


def load(store, entries, vectors, chunk: int = 2000) -> float:
    started = time.perf_counter()
    step = max(chunk, (len(entries) // 10) // chunk * chunk)
    for i in range(0, len(entries), chunk):
        store.bulk_insert(entries[i : i + chunk], vectors[i : i + chunk])
        done = min(i + chunk, len(entries))
        if done % step == 0 or done == len(entries):
            log(f"  inserting {done:,}/{len(entries):,} FAQs ({time.perf_counter() - started:.0f} s)")
    store.flush()
    return time.perf_counter() - started


def dense_index(store, timeout_s: float = 600.0) -> dict:
    """Waits until the dense index covers every row (Milvus builds it after flush); returns what it reports.
    Reads the store's client: the store has no index API (benchmark only)."""
    client, name = store._client, store.physical_collection
    started = time.perf_counter()
    info: dict = {}
    while True:
        try:
            names = client.list_indexes(name, field_name="dense")
            info = dict(client.describe_index(name, names[0])) if names else {}
        except Exception as e:  # milvus-lite may report less
            return {"error": str(e)[:200]}
        total, indexed = info.get("total_rows"), info.get("indexed_rows")
        pending = info.get("pending_index_rows", 0)
        if total is None or indexed is None or (indexed >= total and not pending):
            break
        if time.perf_counter() - started > timeout_s:
            info["timed_out"] = True
            break
        time.sleep(1.0)
    keep = ("index_type", "metric_type", "total_rows", "indexed_rows", "state", "timed_out")
    out = {k: info[k] for k in keep if k in info}
    out["wait_s"] = round(time.perf_counter() - started, 1)
    return out


def measure(store, texts, vectors, mode: str, top_k: int, warmup: int) -> dict:
    for i in range(min(warmup, len(texts))):
        store.search(texts[i], vectors[i], top_k=top_k, mode=mode)
    lat, empty = [], 0
    started = time.perf_counter()
    for text, vec in zip(texts, vectors, strict=True):
        t = time.perf_counter()
        hits = store.search(text, vec, top_k=top_k, mode=mode)
        lat.append((time.perf_counter() - t) * 1000)
        empty += not hits
    wall = time.perf_counter() - started
    a = np.array(lat)
    return {
        "p50_ms": round(float(np.percentile(a, 50)), 3),
        "p99_ms": round(float(np.percentile(a, 99)), 3),
        "qps": round(len(lat) / wall, 1),
        "mean_ms": round(float(a.mean()), 3),
        "empty_results": empty,
    }


def open_store(
    backend: str,
    where: str,
    n: int,
    entries,
    timeout_s: float,
    consistency: str = "Session",
    existing: str | None = None,
):
    """(store, how): milvus-lite on a .db file; on the server through an alias as in production, or directly
    on a collection if the server refuses the alias calls. `existing`: reopen that collection."""
    from services.faq.domain import kb_terms
    from services.faq.milvus_store import MilvusFaqStore
    from services.faq.testing import HashingEmbedder

    kw = {
        "embedder_version": HashingEmbedder(DIM).version,
        "consistency_level": consistency,
        "timeout_s": timeout_s,
    }
    if backend == "milvus-lite":
        return MilvusFaqStore(where, "faq", DIM, jieba_words=kb_terms(entries), **kw), "alias"
    if existing is not None:
        return MilvusFaqStore(where, f"bench{n}", DIM, physical_collection=existing, **kw), "collection"
    try:
        return MilvusFaqStore(where, f"bench{n}", DIM, **kw), "alias"
    except Exception as e:
        log(f"  alias open failed on the server ({str(e)[:200]}); opening a collection directly")
        return MilvusFaqStore(
            where, f"bench{n}", DIM, physical_collection=f"bench{n}_direct", **kw
        ), "collection"


def measure_modes(store, backend, n, consistency, texts, qvecs, args, rows, detail) -> None:
    modes = ["dense", "hybrid"] if store.bm25_supported else ["dense"]
    for mode in modes:
        log(f"  searching {len(texts)} queries, {mode}, {consistency} consistency …")
        m = measure(store, texts, qvecs, mode, args.top_k, args.warmup)
        row = {"backend": backend, "entries": n, "mode": mode, "consistency": consistency}
        rows.append({**row, **{k: m[k] for k in ("p50_ms", "p99_ms", "qps")}})
        detail["measurements"].append({**row, **m})
        log(
            f"  {backend:>13} {n:>7,} {mode:>6} {consistency:>7}: p50 {m['p50_ms']:.2f} ms, "
            f"p99 {m['p99_ms']:.2f} ms, {m['qps']:.0f} qps"
        )


def run_size(backend, where, n, entries, vectors, texts, qvecs, args) -> tuple[list[dict], dict]:
    store, how = open_store(backend, where, n, entries, args.timeout_s)
    rows: list[dict] = []
    try:
        health = store.health()
        log(
            f"  {backend}: {health.get('backend')} {health.get('server_version')}, bm25 {health['bm25_supported']}"
        )
        insert_s = load(store, entries, vectors)
        index = dense_index(store)
        rows_n = store.row_count()
        log(f"  {rows_n:,} rows in {insert_s:.1f} s ({rows_n / insert_s:,.0f} rows/s); index {index}")
        detail = {"backend": backend, "entries": n, "phrasing_rows": rows_n, "insert_s": round(insert_s, 2),
                  "store_opened": how, "bm25_supported": store.bm25_supported, "index": index,
                  "server_version": health.get("server_version"), "measurements": []}  # fmt: skip
        measure_modes(store, backend, n, "Session", texts, qvecs, args, rows, detail)
        if backend != "milvus-server":
            return rows, detail
        name = store.physical_collection
    finally:
        store.close()
    # Strong waits for the server's time tick; Bounded may read data a few seconds old. The collection is then
    # dropped through a store opened on it directly (the alias goes with it).
    for consistency in [*(c for c in args.server_consistency if c != "Session"), None]:
        other, _ = open_store(
            backend, where, n, entries, args.timeout_s, consistency or "Session", existing=name
        )
        try:
            if consistency is None:
                other.drop_collection(name)
            else:
                measure_modes(other, backend, n, consistency, texts, qvecs, args, rows, detail)
        finally:
            other.close()
    return rows, detail


# ── main ────────────────────────────────────────────────────────────────────────────────────────────


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.faq_bench", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--entries", default="1000,10000,100000", help="comma-separated knowledge-base sizes (FAQs)"
    )
    p.add_argument("--backends", default=",".join(BACKENDS))
    p.add_argument("--queries", type=int, default=500)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument(
        "--alternatives", type=int, default=3, help="alternatives per synthetic FAQ (rows = 1 + this)"
    )
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--server-timeout", type=float, default=120.0, help="seconds for milvus-server to come up")
    p.add_argument(
        "--server-consistency",
        default="Session,Strong,Bounded",
        help="read consistency levels measured on milvus-server (the store's default is Session)",
    )
    p.add_argument("--results", type=Path, default=Path("bench/results"))
    p.add_argument("--timeout-s", type=float, default=TIMEOUT_S, help="per-call timeout towards Milvus")
    args = p.parse_args(argv)
    logging.getLogger("pymilvus").setLevel(
        logging.CRITICAL
    )  # the store raises what matters; no RPC tracebacks
    sizes = [int(x.replace("_", "")) for x in args.entries.split(",") if x.strip()]
    args.server_consistency = [c.strip() for c in args.server_consistency.split(",") if c.strip()]
    if bad := [c for c in args.server_consistency if c not in ("Strong", "Bounded", "Session", "Eventually")]:
        p.error(f"unknown consistency level(s) {bad}")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if unknown := [b for b in backends if b not in BACKENDS]:
        p.error(f"unknown backend(s) {unknown}; choose from {', '.join(BACKENDS)}")
    if any(n < 1 for n in sizes) or args.queries < 1:
        p.error("--entries and --queries must be positive")

    from bench.milvus_server import (
        MilvusServer23,
        MilvusServerUnavailable,
        enter_private_netns,
        listening_addresses,
    )

    server_info: dict = {"requested": "milvus-server" in backends}
    server = None
    if "milvus-server" in backends:
        try:
            enter_private_netns()  # first, before any thread: everything below shares the loopback-only namespace
            server = MilvusServer23()
            log(f"starting milvus-server (Milvus 2.3.5) in {server.base_dir}, private network namespace …")
            started = time.perf_counter()
            uri = server.start(args.server_timeout)
            proc = server.server.server_proc
            server_info.update(uri=uri, version=server.version, start_s=round(time.perf_counter() - started, 1),
                               listening=listening_addresses(proc.pid), interfaces=["lo"])  # fmt: skip
            log(f"milvus-server up at {uri} in {server_info['start_s']} s; listening (namespace with only lo): "
                f"{', '.join(server_info['listening'])}")  # fmt: skip
        except (OSError, MilvusServerUnavailable) as e:
            server_info["error"] = str(e)
            log(f"milvus-server cannot start, measuring milvus-lite only: {e}")
            backends = [b for b in backends if b != "milvus-server"]
            if server is not None:
                server.stop()
            server = None

    from services.faq.testing import HashingEmbedder

    embedder = HashingEmbedder(DIM)
    for note in NOTES:
        log(f"note: {note}")
    load_before = os.getloadavg()
    if load_before[0] > 0.5:
        log(f"warning: load average {load_before[0]:.2f} before the run: other work skews the figures")
    rows, runs = [], []
    started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    try:
        for n in sizes:
            log(f"── {n:,} FAQs ──")
            log(f"  generating {n:,} synthetic FAQs from the demo knowledge base …")
            entries = synthetic_kb(n, args.alternatives)
            vectors = embed_all(embedder, entries)
            texts = sample_queries(entries, args.queries)
            qvecs = list(embedder.embed(texts))
            for backend in backends:
                tmp = tempfile.mkdtemp(prefix="faq-bench-") if backend == "milvus-lite" else None
                where = str(Path(tmp) / "faq.db") if tmp else server.uri
                try:
                    r, d = run_size(backend, where, n, entries, vectors, texts, qvecs, args)
                    rows += r
                    runs.append(d)
                except Exception as e:
                    log(f"  {backend} at {n:,} FAQs failed: {type(e).__name__}: {str(e)[:300]}")
                    runs.append(
                        {"backend": backend, "entries": n, "error": f"{type(e).__name__}: {e}"[:1000]}
                    )
                finally:
                    if tmp:
                        shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if server is not None:
            server.stop()
    load_after = os.getloadavg()

    log("")
    log(f"{'backend':>13} {'FAQs':>8} {'mode':>6} {'consist.':>8} {'p50 ms':>8} {'p99 ms':>8} {'qps':>8}")
    for r in rows:
        log(
            f"{r['backend']:>13} {r['entries']:>8,} {r['mode']:>6} {r['consistency']:>8} "
            f"{r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['qps']:>8.1f}"
        )
    ratios = []

    def pick(backend: str, n: int, consistency: str):
        match = (
            r
            for r in rows
            if (r["backend"], r["entries"], r["mode"], r["consistency"]) == (backend, n, "dense", consistency)
        )
        return next(match, None)

    for n in sizes:
        lite = pick("milvus-lite", n, "Session")
        for consistency in args.server_consistency:
            srv = pick("milvus-server", n, consistency)
            if lite and srv:
                ratio = {
                    "entries": n,
                    "mode": "dense",
                    "server_consistency": consistency,
                    "p50_server_over_lite": round(srv["p50_ms"] / lite["p50_ms"], 2),
                    "qps_server_over_lite": round(srv["qps"] / lite["qps"], 2),
                }
                ratios.append(ratio)
                log(
                    f"milvus-server ({consistency}) / milvus-lite at {n:,} FAQs, dense: "
                    f"p50 {ratio['p50_server_over_lite']:.2f}x, qps {ratio['qps_server_over_lite']:.2f}x"
                )
    if "error" in server_info:
        log(f"milvus-server not measured: {server_info['error'][:300]}")
    for note in NOTES:
        log(f"note: {note}")

    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"faq-{time.strftime('%Y%m%d-%H%M%S')}.json"
    result = {
        "rows": rows,
        "ratios": ratios,
        "runs": runs,
        "notes": NOTES,
        "embedder": {
            "kind": "HashingEmbedder (services/faq/testing.py)",
            "dim": DIM,
            "version": embedder.version,
        },
        "queries": args.queries,
        "top_k": args.top_k,
        "alternatives": args.alternatives,
        "warmup": args.warmup,
        "timeout_s": args.timeout_s,
        "server": server_info,
        "host": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in load_after],
        "started_at": started_at,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    log(f"written: {out}")
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
