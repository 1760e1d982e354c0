"""`make load` / `make reliability` accounting (bench/load_records.py, load_report.py, load_run.py) and the locust
mix (bench/load_mix.py) against a small fake gateway on loopback."""

from __future__ import annotations

import json
import threading
import time

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from bench.load_records import (
    Record,
    find_knee,
    flat_within,
    growth,
    lost_writes,
    read_records,
    recovery_s,
    summarize,
)
from bench.load_report import replace_section
from bench.load_run import USER_RATE, locust_argv, run_load
from bench.load_stack import free_port


def rec(start: float, status: int = 200, kind: str = "chat", latency_ms: float = 10.0, **kw) -> Record:
    return Record(start, kind, status, latency_ms, **kw)


def test_summary_counts_5xx_and_unanswered_as_errors_not_4xx():
    records = [rec(0), rec(0.5, 503), rec(1.0, 0), rec(1.5, 429), rec(2.0, degraded=True)]
    s = summarize(records, 0, 2.5)
    assert (s["requests"], s["errors"], s["client_4xx"], s["degraded"]) == (5, 2, 1, 1)
    assert s["error_pct"] == 40.0
    assert s["rate_rps"] == 2.0  # 5 requests over the 2.5 s window


def test_summary_latency_only_of_answered_requests_and_window_bounds():
    records = [rec(t, latency_ms=100.0) for t in range(10)] + [rec(5.5, 0, latency_ms=10_000.0)]
    s = summarize(records, 2, 8)  # starts 2..7 and the failed one
    assert s["requests"] == 7
    assert s["kinds"]["chat"]["p99_ms"] == 100.0  # the timeout is an error, not a latency


def test_recovery_is_measured_from_the_fault_to_the_end_of_the_last_bad_request():
    records = [rec(t / 2) for t in range(0, 20)]  # good every 0.5 s from 0 to 9.5
    records += [rec(3.0, 503, latency_ms=500), rec(4.0, 0, latency_ms=2000)]  # last bad one ends at 6.0
    assert recovery_s(sorted(records, key=lambda r: r.start), fault_at=2.0) == 4.0


def test_recovery_is_zero_without_bad_answers_and_none_when_never_good_again():
    good = [rec(t) for t in range(10)]
    assert recovery_s(good, fault_at=3) == 0.0
    failing_to_the_end = good[:5] + [rec(t, 503) for t in range(5, 10)]
    assert recovery_s(failing_to_the_end, fault_at=3) is None
    degraded_then_short_good = good[:5] + [rec(5, degraded=True), rec(8), rec(9)]  # good for only 1 s
    assert recovery_s(degraded_then_short_good, fault_at=3, settle_s=3) is None


def test_lost_writes_are_acknowledged_ids_the_store_lacks():
    records = [
        rec(0, 201, "admin_create", faq_id="a"),
        rec(1, 201, "admin_create", faq_id="b"),
        rec(2, 503, "admin_create"),  # refused: never acknowledged, so not lost
    ]
    assert lost_writes(records, present={"a"}) == ["b"]
    assert lost_writes(records, present={"a", "b"}) == []


def _step(rate: float, p99: float | None, error_pct: float = 0.0) -> dict:
    return {"target_rps": rate, "summary": {"error_pct": error_pct, "kinds": {"chat": {"p99_ms": p99}}}}


def test_knee_is_the_last_step_within_slo_before_the_first_miss():
    steps = [_step(4, 80), _step(8, 120), _step(16, 400), _step(32, 90)]  # 32 was lucky: does not count
    assert find_knee(steps, 250, 0.5)["target_rps"] == 8
    assert find_knee([_step(4, 80), _step(8, 100, error_pct=1.0)], 250, 0.5)["target_rps"] == 4
    assert find_knee([_step(4, 300)], 250, 0.5) is None


def test_memory_flat_and_fd_growth():
    assert flat_within([100, 101, 99, 104, 105, 106], 10) == (True, 5.0)
    assert flat_within([100, 100, 100, 115, 112, 118], 10)[0] is False
    assert growth([50, 52, 50, 50, 51, 50]) == 0
    assert growth([50, 50, 50, 60, 64, 70]) == 14
    with pytest.raises(ValueError, match="at least 6"):
        growth([1, 2, 3])
    # a flat line with sampling noise is no growth; a slow leak over the soak is
    # the open fds of the 10-minute soak in docs/reliability.md: 161-176 around a flat line
    noisy = [
        166,
        166,
        170,
        170,
        174,
        170,
        170,
        172,
        170,
        166,
        174,
        166,
        172,
        170,
        170,
        166,
        170,
        170,
        168,
        167,
        172,
        170,
        166,
        168,
        170,
        168,
        170,
        170,
        166,
        166,
        172,
        170,
        171,
        161,
        176,
        168,
        170,
        170,
        166,
        168,
        166,
        170,
        170,
        170,
        168,
        170,
        170,
        166,
        170,
        166,
        171,
        172,
        170,
        170,
    ]
    assert growth(noisy) == 0
    assert growth([166 + i // 2 for i in range(40)]) > 0


def test_report_section_is_replaced_in_place_and_appended_once():
    doc = "# Reliability\n\nintro\n"
    once = replace_section(doc, "load", "figures v1")
    assert once.count("<!-- load:begin -->") == 1 and "figures v1" in once
    twice = replace_section(once + "\n## after\n", "load", "figures v2")
    assert "figures v1" not in twice and "figures v2" in twice and twice.endswith("## after\n")
    assert twice.startswith("# Reliability\n\nintro\n")


def test_offered_rate_is_users_times_per_user_rate():
    argv, users, per_user = locust_argv("http://127.0.0.1:1", 7.0, 30)
    assert users == 14 and per_user == pytest.approx(USER_RATE)
    assert argv[argv.index("-u") + 1] == "14" and argv[argv.index("-t") + 1] == "30s"
    assert argv[argv.index("-r") + 1] == "7"  # users start spread over one interval, not in one burst
    _, users, per_user = locust_argv("http://127.0.0.1:1", 0.2, 5)
    assert users == 1 and per_user == pytest.approx(0.2)


# ── the locust mix against a fake gateway ───────────────────────────────────────────────────────────────


def fake_gateway(key: str) -> FastAPI:
    app = FastAPI()
    app.state.turns = 0

    @app.post("/v1/chat")
    async def chat(request: Request):
        assert request.headers["x-api-key"] == key
        app.state.turns += 1
        if app.state.turns % 5 == 0:
            return JSONResponse({"error": "upstream_unavailable"}, status_code=503)
        body = await request.json()
        return {
            "session_id": body["session_id"],
            "degraded": ["faq_down"] if app.state.turns % 5 == 1 else [],
        }

    @app.post("/v1/faq/search")
    async def search(request: Request):
        return {"results": [{"hits": []}]}

    @app.post("/admin/faq/faqs", status_code=201)
    async def create(request: Request):
        assert request.headers["authorization"] == f"Bearer {key}"
        return {"faq_id": (await request.json())["faq_id"]}

    @app.get("/admin/faq/faqs")
    async def page():
        return {"items": [], "total": 0}

    @app.get("/admin/faq/faqs/{faq_id}")
    async def one(faq_id: str):
        return {"faq_id": faq_id}

    return app


@pytest.fixture()
def gateway_url():
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(fake_gateway("k-test"), host="127.0.0.1", port=port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_locust_mix_records_every_request_with_status_degraded_and_written_ids(gateway_url, tmp_path):
    records_path = tmp_path / "records.jsonl"
    records, began = run_load(gateway_url, "k-test", 40.0, 4, records_path)
    assert read_records(records_path) == records
    kinds = {r.kind for r in records}
    assert {"chat", "faq_search"} <= kinds
    chats = [r for r in records if r.kind == "chat"]
    assert 0.6 < len(chats) / len(records) < 0.95  # 80 % of the mix
    assert any(r.status == 503 for r in chats) and any(r.degraded for r in chats)
    assert not any(r.degraded for r in chats if r.status != 200)
    writes = [r for r in records if r.kind == "admin_create"]
    assert all(r.status == 201 and r.faq_id for r in writes)
    assert all(began - 1 <= r.start <= began + 10 for r in records)
    json.dumps([r.__dict__ for r in records])  # plain values only


class FakeStack:
    """What `bench.load.soak` uses of a stack: its URL and key, and resource samples (here scripted)."""

    def __init__(self, url: str, rss: list[float], fds: list[int]):
        self.url, self.key = url, "k-test"
        self._samples = iter(zip(rss, fds, strict=True))
        self.last = (rss[-1], fds[-1])

    def resources(self) -> dict:
        rss, fds = next(self._samples, self.last)
        return {"rss_mb": rss, "fds": fds}


def soak_args(**kw):
    import argparse

    return argparse.Namespace(**{"soak": 4.0, "sample_every": 0.25, "memory_pct": 10.0, **kw})


def test_soak_fails_on_errors_memory_growth_and_fd_growth(gateway_url, tmp_path):
    from bench.load import soak

    # the fake gateway answers every 5th chat with a 503: a soak with errors never passes
    steady = soak(FakeStack(gateway_url, [500.0] * 40, [100] * 40), 20.0, tmp_path, soak_args())
    assert steady["summary"]["errors"] > 0 and steady["verdict"] == {
        "zero_errors": False,
        "memory_flat": True,
        "no_fd_growth": True,
    }
    assert not steady["passed"] and len(steady["samples"]) >= 6
    leaking = FakeStack(gateway_url, [500.0 + 20 * i for i in range(40)], [100 + 3 * i for i in range(40)])
    (tmp_path / "leak").mkdir()
    grown = soak(leaking, 20.0, tmp_path / "leak", soak_args())
    assert grown["verdict"]["memory_flat"] is False and grown["memory_change_pct"] > 10
    assert grown["verdict"]["no_fd_growth"] is False and grown["fd_growth"] > 0
