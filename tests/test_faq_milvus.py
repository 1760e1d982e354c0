"""MilvusFaqStore beyond the contract: persistence, BM25 fallback, zero-downtime re-index, milvus-lite server."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from pymilvus import MilvusException

from services.faq.domain import FaqEntry, ModeNotSupported, ReindexFailed, StoreUnavailable, kb_terms
from services.faq.milvus_schema import physical_name
from services.faq.milvus_store import MilvusFaqStore
from services.faq.reindex import reindex
from services.faq.store import embed_entries
from services.faq.testing import FailingEmbedder, HashingEmbedder, load_demo_kb
from tests import demo_kb

ROOT = Path(__file__).resolve().parent.parent
DIM = 64
V1 = HashingEmbedder(DIM)
V2 = HashingEmbedder(DIM, salt="v2")
KB = load_demo_kb()
TERMS = kb_terms(KB)
QUERY = "能不能发顺丰"


def open_store(uri: str, **kw) -> MilvusFaqStore:
    kw.setdefault("embedder_version", V1.version)
    return MilvusFaqStore(uri, "faq", DIM, jieba_words=TERMS, **kw)


def loaded(uri: str, entries=KB, embedder=V1) -> MilvusFaqStore:
    store = open_store(uri, embedder_version=embedder.version)
    store.upsert(entries, embed_entries(embedder, entries))
    return store


def factory(uri: str, embedder):
    return lambda name: MilvusFaqStore(
        uri, "faq", DIM, physical_collection=name, embedder_version=embedder.version, jieba_words=TERMS
    )


def marked(entries: list[FaqEntry], mark: str) -> list[FaqEntry]:
    return [FaqEntry(**{**e.model_dump(), "answer": f"{mark} {e.answer}"}) for e in entries]


class Searcher:
    """Searches through the alias in a loop (as the gateway would) and records every outcome."""

    def __init__(self, store: MilvusFaqStore):
        self.store, self.errors, self.results = store, [], []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._vector = V1.embed([QUERY])[0]

    def _run(self):
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                hits = self.store.search(QUERY, self._vector, top_k=3, mode="hybrid")
                self.results.append((started, [h.answer for h in hits]))
            except Exception as e:  # any failure counts
                self.errors.append(repr(e))
            time.sleep(0.005)

    def __enter__(self):
        self._thread.start()
        time.sleep(0.2)
        return self

    def settle(self, n: int = 3, timeout: float = 20.0) -> float:
        """Waits until `n` searches started after this call have finished; returns the call's time."""
        now = time.monotonic()
        while sum(1 for t, _ in self.results if t > now) < n and not self.errors:
            assert time.monotonic() < now + timeout, "the searcher stalled"
            time.sleep(0.02)
        return now

    def __exit__(self, *exc):
        self.settle()
        self._stop.set()
        self._thread.join(10)


def test_data_survives_close_and_reopen(tmp_path):
    uri = str(tmp_path / "faq.db")
    store = loaded(uri)
    collection = store.physical_collection
    before = store.search(QUERY, V1.embed([QUERY])[0], top_k=3)
    store.close()
    store.close()  # idempotent

    again = open_store(uri)
    try:
        assert again.count() == demo_kb.FAQS and again.row_count() == demo_kb.ROWS
        assert again.physical_collection == collection
        assert again.get("faq-004") == next(e for e in KB if e.faq_id == "faq-004")
        after = again.search(QUERY, V1.embed([QUERY])[0], top_k=3)
        assert [(h.faq_id, h.matched_text) for h in after] == [(h.faq_id, h.matched_text) for h in before]
        assert [h.score for h in after] == pytest.approx([h.score for h in before], abs=1e-3)
        assert again.health()["bm25_supported"] is True
    finally:
        again.close()


def test_dimension_mismatch_is_refused(tmp_path):
    uri = str(tmp_path / "faq.db")
    open_store(uri).close()
    with pytest.raises(Exception, match="dense dim"):
        MilvusFaqStore(uri, "faq", 32)


@pytest.mark.parametrize("server", ["refuses", "ignores"])
def test_without_bm25_the_store_runs_dense_only(tmp_path, monkeypatch, caplog, server):
    original = MilvusFaqStore._create_with

    def old_milvus(self, name, bm25):
        if bm25 and server == "refuses":  # Milvus 2.3: unknown function / sparse type
            raise MilvusException(message="BM25 function is not supported")
        return original(self, name, False)  # Milvus 2.4: the function is silently dropped

    monkeypatch.setattr(MilvusFaqStore, "_create_with", old_milvus)
    with caplog.at_level(logging.WARNING, logger="services.faq.milvus_store"):
        store = loaded(str(tmp_path / "faq.db"))
    try:
        assert "BM25 not supported" in caplog.text
        assert store.health()["bm25_supported"] is False
        hits = store.search(QUERY, V1.embed([QUERY])[0], top_k=3, mode="hybrid")
        assert hits[0].faq_id == "faq-004" and {h.source for h in hits} == {"dense"}
        with pytest.raises(ModeNotSupported):
            store.search(QUERY, None, top_k=3, mode="bm25")
    finally:
        store.close()


def test_reindex_switches_the_alias_under_concurrent_searches(tmp_path):
    uri = str(tmp_path / "faq.db")
    serving = loaded(uri, marked(KB, "[v1]"))
    old = serving.physical_collection
    try:
        with Searcher(serving) as searcher:
            report = reindex(factory(uri, V2), marked(KB, "[v2]"), V2, "faq", batch_size=40, drop_grace_s=0.2)
            switched = searcher.settle()
        assert searcher.errors == []
        assert all(answers for _, answers in searcher.results)
        marks = [(t, {a[:4] for a in answers}) for t, answers in searcher.results]
        assert any(m == {"[v1]"} for t, m in marks if t < switched)
        after = [m for t, m in marks if t > switched]
        assert after and all(m == {"[v2]"} for m in after)

        assert report.previous == old and report.collection.startswith("faq_hash64v2_")
        assert report.faqs == demo_kb.FAQS and report.rows == demo_kb.ROWS and report.left_behind == []
        assert serving.physical_collection == report.collection
        assert serving.list_collections() == [report.collection]
        assert serving.health()["embedder_version"] == V2.version
    finally:
        serving.close()


def test_failed_reindex_leaves_the_old_collection_serving(tmp_path):
    uri = str(tmp_path / "faq.db")
    serving = loaded(uri, marked(KB, "[v1]"))
    old = serving.physical_collection
    try:
        with Searcher(serving) as searcher:
            with pytest.raises(ReindexFailed, match="embedder failed"):
                reindex(factory(uri, V2), KB, FailingEmbedder(V2, fail_on=2), "faq", batch_size=30)
        assert searcher.errors == [] and searcher.results
        assert all(a.startswith("[v1]") for _, answers in searcher.results for a in answers)

        def lossy(name):  # a store that silently loses its last batch: the row count check must catch it
            store = factory(uri, V2)(name)
            insert = store.bulk_insert
            store.bulk_insert = lambda entries, vectors: insert(entries[:-1], vectors[:-1])
            return store

        with pytest.raises(ReindexFailed, match=f"expected {demo_kb.ROWS} / {demo_kb.FAQS}"):
            reindex(lossy, KB, V2, "faq", batch_size=50)
        assert serving.physical_collection == old
        assert serving.list_collections() == [old]
        assert serving.count() == demo_kb.FAQS
    finally:
        serving.close()


def test_reindex_creates_the_alias_on_an_empty_database(tmp_path):
    uri = str(tmp_path / "faq.db")
    report = reindex(factory(uri, V1), KB[:10], V1, "faq", drop_grace_s=0)
    assert report.previous is None
    store = open_store(uri)
    try:
        assert store.physical_collection == report.collection and store.count() == 10
    finally:
        store.close()


def test_settings_open_a_store(tmp_path, monkeypatch):
    from services.faq.settings import FaqSettings

    monkeypatch.setenv("KEFU_FAQ_URI", str(tmp_path / "kb.db"))
    monkeypatch.setenv("KEFU_FAQ_EMBEDDER_DIM", "64")
    monkeypatch.setenv("KEFU_FAQ_RANKER", "weighted")
    store = FaqSettings().open_store()
    try:
        health = store.health()
        assert health["ok"] and health["alias"] == "faq" and health["ranker"] == "weighted"
        assert store.dim == 64 and store.ranker.kind == "weighted"
    finally:
        store.close()


# ── milvus-lite server: several processes on one database ──────────────────────────────────────────


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiteServer:
    """A `milvus-lite server` process on a loopback port, over `data_dir`; it can be killed and started again on
    the same port and data (what a crash and a restart by its supervisor look like to clients)."""

    def __init__(self, data_dir: Path, log_path: Path):
        self.exe = Path(sys.executable).parent / "milvus-lite"
        self.data_dir, self.log_path, self.port = data_dir, log_path, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        assert self.exe.exists(), f"no milvus-lite executable beside {sys.executable}"
        argv = [str(self.exe), "server", "--data-dir", str(self.data_dir)]
        with open(self.log_path, "ab") as log_file:
            self.proc = subprocess.Popen(
                [*argv, "--host", "127.0.0.1", "--port", str(self.port)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"milvus-lite server exited {self.proc.returncode}: {self.log_path.read_text()[-500:]}"
                )
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                assert time.monotonic() < deadline, (
                    f"milvus-lite server not listening within 30 s: {self.log_path.read_text()[-500:]}"
                )
                time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing is flushed or released."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.kill()


@pytest.fixture
def lite(tmp_path):
    server = LiteServer(tmp_path / "data", tmp_path / "server.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def lite_server(lite):
    return lite.uri


CHILD = textwrap.dedent(
    """
    import sys
    from services.faq.domain import FaqEntry
    from services.faq.milvus_store import MilvusFaqStore
    from services.faq.store import embed_entries
    from services.faq.testing import HashingEmbedder
    emb = HashingEmbedder(64)
    store = MilvusFaqStore(sys.argv[1], "faq", 64)
    hits = store.search("能不能发顺丰", emb.embed(["能不能发顺丰"])[0], top_k=1)
    e = FaqEntry(faq_id="faq-900", question="门店几点开门", answer="本店只在线上经营。")
    store.upsert([e], embed_entries(emb, [e]))
    print(hits[0].faq_id, store.health()["backend"])
    store.close()
    """
)


@pytest.mark.slow
def test_milvus_lite_server_is_shared_by_processes(lite_server):
    store = loaded(lite_server, KB[:20])
    try:
        assert store.health()["backend"] == "milvus-lite-server"
        child = subprocess.run(
            [sys.executable, "-c", CHILD, lite_server],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert child.returncode == 0, child.stderr[-2000:]
        assert child.stdout.split() == ["faq-004", "milvus-lite-server"]
        assert store.get("faq-900").question == "门店几点开门"  # written by the other process
        hits = store.search("门店几点开门", V1.embed(["门店几点开门"])[0], top_k=1)
        assert hits[0].faq_id == "faq-900"

        report = reindex(
            lambda n: open_store(lite_server, physical_collection=n), KB[:20], V1, "faq", drop_grace_s=0
        )
        assert store.physical_collection == report.collection and store.count() == 20
    finally:
        store.close()


def until_ok(call, within_s: float):
    """`call()`'s result once it stops raising, polled every 0.1 s; the last error when `within_s` runs out."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            return call()
        except StoreUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_reindex_drops_collections_an_interrupted_rebuild_left(tmp_path):
    """A process killed between creating the new collection and switching the alias leaves that collection on
    disk; the next rebuild of the alias drops such orphans once they are old enough (a younger one may be a
    rebuild running elsewhere), and never a collection an alias points at."""
    uri = str(tmp_path / "faq.db")
    store = loaded(uri, KB[:10])
    day = 24 * 3600
    try:
        old = physical_name("faq", V1.version, time.time() - day)  # killed yesterday, mid-rebuild
        young = physical_name("faq", V2.version, time.time() - 5)  # a rebuild still running
        other = physical_name("faq", "other", time.time() - day)  # behind another alias: in use
        for name in (old, young, other):
            MilvusFaqStore(uri, "faq", DIM, physical_collection=name, embedder_version=V1.version).close()
        side = MilvusFaqStore(uri, "faq", DIM, physical_collection=other, embedder_version=V1.version)
        side.point_alias("faq_other")
        side.close()
        serving = store.physical_collection

        report = reindex(factory(uri, V1), KB[:10], V1, "faq", drop_grace_s=0)
        assert report.orphans_dropped == [old]
        assert report.previous == serving  # dropped as the previous collection, as before
        assert sorted(store.list_collections()) == sorted([report.collection, young, other])
        assert store.count() == 10
    finally:
        store.close()


@pytest.mark.slow
def test_store_recovers_when_the_milvus_lite_server_restarts(lite):
    """Killed and restarted on the same port and data: the server comes back with every collection released.
    The same client (no reopen) must search, read and write again within seconds, and `probe()` say so."""
    store = loaded(lite.uri, KB[:20])
    vector = V1.embed([QUERY])[0]
    try:
        assert store.search(QUERY, vector, 1)[0].faq_id == "faq-004" and store.probe() is None
        lite.kill()
        with pytest.raises(StoreUnavailable):
            store.search(QUERY, vector, 1)
        assert store.probe() is not None  # readiness sees the outage
        lite.start()
        back = time.monotonic()
        assert until_ok(lambda: store.search(QUERY, vector, 1), within_s=15)[0].faq_id == "faq-004"
        assert time.monotonic() - back < 15
        assert store.search(QUERY, None, 1, "bm25")[0].faq_id == "faq-004"
        assert store.count() == 20 and store.get("faq-004").faq_id == "faq-004"
        assert store.health()["ok"] is True and store.probe() is None
        new = FaqEntry(faq_id="faq-900", question="门店几点开门", answer="本店只在线上经营。")
        store.upsert([new], embed_entries(V1, [new]))
        assert store.search(new.question, V1.embed([new.question])[0], 1)[0].faq_id == "faq-900"
    finally:
        store.close()


@pytest.mark.slow
def test_the_store_is_back_within_a_second_of_a_long_outage(lite):
    """After 8 s down with the gateway's probes failing all along, gRPC's reconnect back-off had grown to
    seconds: the client saw the restarted server about 4 s after it listened again. With the back-off capped
    (milvus_conn.RECONNECT_OPTIONS) it is back within a second."""
    store = loaded(lite.uri, KB[:5])
    try:
        lite.kill()
        down = time.monotonic()
        while time.monotonic() - down < 8:  # probes, as readiness sends them, all failing
            assert store.probe() is not None
            time.sleep(0.5)
        lite.start()  # returns once the server accepts connections
        listening = time.monotonic()
        assert until_ok(lambda: _probe_ok(store), within_s=15) is None
        assert time.monotonic() - listening < 1.5
    finally:
        store.close()


@pytest.mark.slow
def test_probe_loads_a_released_collection_without_search_traffic(lite):
    """Readiness probes alone bring a restarted server's collection back (no search needed first)."""
    store = loaded(lite.uri, KB[:5])
    try:
        lite.kill()
        lite.start()
        assert until_ok(lambda: _probe_ok(store), within_s=15) is None
        state = store._client.raw.get_load_state(store.physical_collection)["state"]
        assert state.name == "Loaded"
    finally:
        store.close()


def _probe_ok(store: MilvusFaqStore) -> None:
    if (problem := store.probe()) is not None:
        raise StoreUnavailable(problem)


def test_rebuild_from_stored_vectors_fixes_bm25_ranking_of_faqs_written_after_a_flush(tmp_path):
    """milvus-lite scores BM25 per segment; `StoredVectors` + `reindex` rebuilds in one segment, no encoder."""
    from services.faq.reindex import StoredVectors

    uri = str(tmp_path / "faq.db")
    store = loaded(uri)
    try:
        store.flush()
        new = FaqEntry(faq_id="faq-900", question="电子发票抬头写错了怎么改", answer="在订单详情里申请换开。")
        store.upsert([new], embed_entries(V1, [new]))
        assert store.bm25_needs_rebuild_after_writes
        before = [h.faq_id for h in store.search(new.question, None, 3, "bm25")]
        dense_before = [
            (h.faq_id, round(h.score, 5)) for h in store.search(QUERY, V1.embed([QUERY])[0], 5, "dense")
        ]

        entries = [*KB, new]
        report = reindex(factory(uri, V1), entries, StoredVectors(store, V1.version), "faq", drop_grace_s=0)
        assert report.rows == demo_kb.ROWS + 1 and report.faqs == demo_kb.FAQS + 1
        after = [h.faq_id for h in store.search(new.question, None, 3, "bm25")]
        dense_after = [
            (h.faq_id, round(h.score, 5)) for h in store.search(QUERY, V1.embed([QUERY])[0], 5, "dense")
        ]
        assert "faq-900" not in before[:1] and after[0] == "faq-900", (before, after)
        assert dense_after == dense_before  # the same vectors: dense search is unchanged

        missing = FaqEntry(faq_id="faq-901", question="从没存过的问题", answer="无")
        with pytest.raises(ReindexFailed, match="no stored vector"):
            reindex(factory(uri, V1), [*entries, missing], StoredVectors(store, V1.version), "faq")
        assert store.count() == demo_kb.FAQS + 1  # the failed rebuild left the serving collection alone
    finally:
        store.close()
