"""Overload is refused fast (issue 14 item 7), on a real gateway process (`python -m services.gateway`) whose
worker (`tests/slow_worker.py`, a real HTTP server) takes 600 ms per inference, so the admission slots stay
taken without using CPU. A burst of requests on open connections: the few that get a slot are answered 200,
every other one 503 `overloaded` with `Retry-After` at once (no waiting out a queue first)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
KEY = "kefu-demo-key-change-me"
BURST = 24
pytestmark = pytest.mark.slow


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("overload")
    port, internal, worker_port = free_ports(3)
    worker_url = f"http://127.0.0.1:{worker_port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = []
    logs = [open(tmp / "worker.log", "wb"), open(tmp / "gateway.log", "wb")]  # noqa: SIM115
    procs.append(
        subprocess.Popen(
            [sys.executable, "-m", "tests.slow_worker", "--port", str(worker_port), "--delay-ms", "600"],
            cwd=ROOT, env=env, stdout=logs[0], stderr=subprocess.STDOUT,
        )
    )  # fmt: skip
    gateway_env = {
        **env,
        "KEFU_GATEWAY_PORT": str(port),
        "KEFU_GATEWAY_INTERNAL_PORT": str(internal),
        "KEFU_GATEWAY_WORKERS": json.dumps({m: [worker_url] for m in ("intent", "sentiment", "faq")}),
        "KEFU_GATEWAY_FAQ_ENABLED": "false",
        "KEFU_GATEWAY_CACHE_ENABLED": "false",
        "KEFU_GATEWAY_LOG_LEVEL": "warning",
        "KEFU_GATEWAY_MAX_INFLIGHT": "2",
        "KEFU_GATEWAY_ADMISSION_QUEUE": "2",
    }
    procs.append(
        subprocess.Popen(
            [sys.executable, "-m", "services.gateway"], cwd=ROOT, env=gateway_env, stdout=logs[1],
            stderr=subprocess.STDOUT,
        )
    )  # fmt: skip
    try:
        deadline, ready = time.monotonic() + 90, False
        while time.monotonic() < deadline and all(p.poll() is None for p in procs) and not ready:
            try:
                body = httpx.get(f"http://127.0.0.1:{internal}/readyz", timeout=2).json()
                ready = body.get("status") == "ready"
            except (httpx.HTTPError, ValueError):
                pass
            if not ready:
                time.sleep(0.2)
        assert ready, (tmp / "gateway.log").read_text(errors="replace")[-3000:]
        yield {"port": port, "internal": internal}
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for f in logs:
            f.close()


async def one_request(reader, writer, n: int) -> tuple[int, dict, bytes, float]:
    """POST /v1/chat on an open connection; (status, headers, body, seconds from send to full answer)."""
    body = json.dumps(
        {"session_id": f"burst-{n}", "text": f"订单{n}什么时候发货"}, ensure_ascii=False
    ).encode()
    head = (
        f"POST /v1/chat HTTP/1.1\r\nHost: gw\r\nX-API-Key: {KEY}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    started = time.perf_counter()
    writer.write(head + body)
    await writer.drain()
    status_line = await reader.readline()
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    payload = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status_line.split()[1]), headers, payload, time.perf_counter() - started


async def burst(port: int) -> list[tuple[int, dict, bytes, float]]:
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(BURST)]  # connected first
    try:
        return await asyncio.gather(*(one_request(r, w, n) for n, (r, w) in enumerate(conns)))
    finally:
        for _, w in conns:
            w.close()


def test_a_burst_past_capacity_is_refused_at_once_with_retry_after(gateway):
    results = asyncio.run(burst(gateway["port"]))
    ok = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] == 503]
    assert len(ok) + len(refused) == BURST, [r[0] for r in results]
    assert (
        1 <= len(ok) <= 4
    )  # 2 slots + 2 queued: the queued ones get a slot within the queue-time cap or not
    assert len(refused) >= BURST - 4
    for _, headers, payload, _ in refused:
        assert json.loads(payload)["error"]["code"] == "overloaded"
        assert headers["retry-after"] == "1"
    waits = sorted(r[3] for r in refused)
    # the bound is 100 ms; a loaded 2-core CI box gets more room. Waiting out a queue (the old
    # admission: 0.5 s for a slot, then 503) is far above it.
    assert waits[len(waits) // 2] < 0.25, waits
    assert waits[int(len(waits) * 0.9)] < 0.4, waits
    metrics = httpx.get(f"http://127.0.0.1:{gateway['internal']}/metrics").text
    assert 'kefu_gateway_shed_total{route="/v1/chat"}' in metrics
