"""The gateway process as deployed (`python -m services.gateway`), over real sockets: what the public port
answers and what only the internal port does (issue 11 item 9), and size limits enforced before anything is
buffered (item 4): a request head over the limit is a 431 (public and internal port), a declared or streamed
body over the limit a 413, and the server's memory does not grow by what was sent.

The gateway runs with no reachable worker and no FAQ store: every answer here comes from the edge."""

from __future__ import annotations

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
MAX_BODY = 4096
MAX_HEAD = 32 * 1024  # GatewaySettings.max_header_bytes default
KEY = b"X-API-Key: kefu-demo-key-change-me\r\n"  # a valid key: a refused one is answered 401 before the body
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gateway-ports")
    port, internal, dead = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "KEFU_GATEWAY_PORT": str(port),
        "KEFU_GATEWAY_INTERNAL_PORT": str(internal),
        "KEFU_GATEWAY_WORKERS": json.dumps(
            {m: [f"http://127.0.0.1:{dead}"] for m in ("intent", "sentiment", "faq")}
        ),
        "KEFU_GATEWAY_FAQ_ENABLED": "false",
        "KEFU_GATEWAY_MAX_BODY_BYTES": str(MAX_BODY),
        "KEFU_GATEWAY_LOG_LEVEL": "warning",
    }
    log = open(tmp / "gateway.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.gateway"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert proc.poll() is None, (tmp / "gateway.log").read_text()
        yield {"port": port, "internal": internal, "pid": proc.pid, "log": tmp / "gateway.log"}
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def proc_status(pid: int, field: str) -> int:
    """A memory figure of /proc/<pid>/status (VmRSS, VmHWM) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field}")


def response_of(sock: socket.socket) -> tuple[int, bytes]:
    """Status code and whatever else arrives until the server closes (or 10 s pass)."""
    sock.settimeout(10)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        data += chunk
    assert data.startswith(b"HTTP/1.1 "), data[:200]
    return int(data.split(b" ", 2)[1]), data


def send_head(port: int, head_bytes: int, target: str = "POST /v1/chat") -> tuple[int, bytes]:
    """A request whose head is `head_bytes` long (one big header), sent in 16 KiB pieces."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(f"{target} HTTP/1.1\r\nHost: gw\r\n".encode() + KEY + b"X-Padding: ")
        piece = b"a" * 16384
        sent = 0
        try:
            while sent < head_bytes:
                s.sendall(piece)
                sent += len(piece)
            s.sendall(b"\r\nContent-Length: 2\r\n\r\n{}")
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused part-way: what matters is the answer
        return response_of(s)


# ── what is public, what is internal ────────────────────────────────────────────────────────────────


def test_public_port_serves_no_metrics_and_a_status_only_readyz(gateway):
    public = f"http://127.0.0.1:{gateway['port']}"
    assert httpx.get(public + "/metrics").status_code == 404
    ready = httpx.get(public + "/readyz")
    assert ready.status_code == 503 and ready.json() == {"status": "unavailable"}  # no worker reachable
    assert "127.0.0.1" not in ready.text
    assert httpx.get(public + "/healthz").json() == {"status": "ok"}


def test_internal_port_serves_metrics_and_the_detailed_readyz(gateway):
    internal = f"http://127.0.0.1:{gateway['internal']}"
    metrics = httpx.get(internal + "/metrics")
    assert metrics.status_code == 200 and "kefu_gateway_upstream_up" in metrics.text
    ready = httpx.get(internal + "/readyz")
    assert ready.status_code == 503 and ready.json()["status"] == "unavailable"
    replicas = ready.json()["upstreams"]["intent"]["replicas"]
    assert replicas and replicas[0]["up"] is False and "127.0.0.1" in replicas[0]["upstream"]
    assert httpx.get(internal + "/healthz").json() == {"status": "ok"}
    # the API is not on the internal port
    assert httpx.post(internal + "/v1/chat", json={}).status_code == 404


# ── size limits before reading ──────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("which", ["port", "internal"])
def test_oversize_request_head_is_431_on_both_ports(gateway, which):
    status, data = send_head(gateway[which], 1024 * 1024)
    assert status == 431, data[:300]
    assert b"connection: close" in data.lower()


def test_head_under_the_limit_is_served(gateway):
    status, data = send_head(gateway["port"], MAX_HEAD // 2, "GET /healthz")
    assert status == 200, data[:300]


def test_declared_body_over_the_limit_is_413_without_sending_it(gateway):
    with socket.create_connection(("127.0.0.1", gateway["port"])) as s:
        s.sendall(
            b"POST /v1/chat HTTP/1.1\r\nHost: gw\r\n" + KEY + b"Content-Type: application/json\r\n"
            b"Content-Length: 67108864\r\n\r\n"
        )  # 64 MiB announced, not a byte of it sent: the answer cannot wait for it
        status, data = response_of(s)
    assert status == 413 and b'"body_too_large"' in data and b"67108864" in data


def test_chunked_body_over_the_limit_is_413_while_streaming(gateway):
    with socket.create_connection(("127.0.0.1", gateway["port"])) as s:
        s.sendall(
            b"POST /v1/chat HTTP/1.1\r\nHost: gw\r\n" + KEY + b"Content-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"[" + b" " * (2 * MAX_BODY)
        s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))  # over the limit, and the body never ends
        status, data = response_of(s)
    assert status == 413 and b'"body_too_large"' in data


def test_memory_does_not_grow_by_what_is_sent(gateway):
    """16 MiB of header, then 16 MiB of chunked body: the server refuses both after its limit and keeps none
    of it. Measured as the peak RSS of the server process (reset before), since freed buffers leave no trace
    in the current RSS: a server that buffered the head peaked at several times its size."""
    size = 16 * 1024 * 1024
    pid = gateway["pid"]
    send_head(gateway["port"], 1024 * 1024)  # warm up the refusal path once
    before = proc_status(pid, "VmRSS")
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM (the peak) to the current RSS
    status, _ = send_head(gateway["port"], size, "GET /healthz")
    assert status == 431
    with socket.create_connection(("127.0.0.1", gateway["port"])) as s:
        s.sendall(b"POST /v1/chat HTTP/1.1\r\nHost: gw\r\n" + KEY + b"Transfer-Encoding: chunked\r\n\r\n")
        piece = b"10000\r\n" + b"a" * 65536 + b"\r\n"
        try:
            for _ in range(size // 65536):
                s.sendall(piece)
            s.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, _ = response_of(s)
    assert status == 413
    assert httpx.get(f"http://127.0.0.1:{gateway['port']}/healthz").status_code == 200  # still serving
    peak = proc_status(pid, "VmHWM") - before
    assert peak < size // 4, f"peak RSS grew by {peak / 2**20:.1f} MiB while 2 x 16 MiB were refused"


def test_one_server_failing_to_start_stops_the_other():
    """Two servers in one loop: when one cannot bind its port, the other stops too and the exit code says so
    (uvicorn alone would sys.exit inside the loop and leave the first server's clean-up undone)."""
    import asyncio

    from services.common.servers import ServerSpec, build_servers, serve_all

    async def app(scope, receive, send):  # never called
        raise AssertionError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        specs = [
            ServerSpec(app, "127.0.0.1", free_port()),
            ServerSpec(app, "127.0.0.1", taken.getsockname()[1]),
        ]
        servers = build_servers(specs, max_header_bytes=MAX_HEAD, log_config=None)
        assert asyncio.run(asyncio.wait_for(serve_all(servers), 30)) == 1
    assert all(s.should_exit for s in servers)
