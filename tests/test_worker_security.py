"""Worker hardening (issue 11 items 3, 4, 6, 9; issue 14 item 2): repository control off unless enabled and then
behind a bearer token, model names that cannot leave the repository, no paths in error bodies, docs off, metrics
on the internal port only, size limits before reading (real sockets), access logs without query strings, and
readiness / inference that notice a dead or hung engine.

The shipped default `intent` model is copied into a temporary repository and served by the fake backend (the
repository, tokenizer and manifest checks are real); the engine tests run the fake backend in a real engine
process, which is then stopped (SIGSTOP: alive but silent) or killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import psutil
import pytest
from prometheus_client import CollectorRegistry

from services.runtime.repository import ModelRepository
from services.worker.app import create_worker_app
from services.worker.backends import FakeBackend
from services.worker.engine_process import EngineProcessBackend
from services.worker.manager import ModelManager
from services.worker.metrics import WorkerMetrics
from services.worker.settings import WorkerSettings

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "control-token-for-tests-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
INFER = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["我的快递到哪了"]}]}


# the shipped intent model's (highest) version, and the number a new one would get
SHIPPED = str(
    max(int(d.name) for d in (ROOT / "models" / "shipped" / "intent").iterdir() if d.name.isdigit())
)
NEXT = str(int(SHIPPED) + 1)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A repository holding the shipped `intent` model (and, beside it, a folder that is not a model)."""
    root = tmp_path_factory.mktemp("worker-security")
    shutil.copytree(ROOT / "models" / "shipped" / "intent", root / "repo" / "intent")
    shutil.copytree(
        ROOT / "models" / "shipped" / "intent", root / "outside"
    )  # a model outside the repository
    return root / "repo"


@asynccontextmanager
async def serving(repo: Path, backend_factory=None, **settings):
    settings.setdefault("warmup", False)
    settings.setdefault("models", "intent")
    cfg = WorkerSettings(repository=repo, **settings)
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    factory = backend_factory or (lambda v: FakeBackend(v))
    manager = ModelManager(ModelRepository(repo), cfg, metrics, backend_factory=factory)
    app = create_worker_app(cfg, manager, metrics, registry)
    await manager.start()
    transport = httpx.ASGITransport(app=app)
    internal_url = f"http://worker:{cfg.internal_port}"  # the app picks the internal routes by port
    try:
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://worker", timeout=30) as client,
            httpx.AsyncClient(transport=transport, base_url=internal_url, timeout=30) as internal,
        ):
            client.manager, client.internal = manager, internal
            yield client
    finally:
        await manager.close()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 90))


# ---- item 3: repository control -----------------------------------------------------------------------------


def test_load_and_unload_are_refused_unless_model_control_is_explicit(repo):
    async def main():
        async with serving(repo) as c:
            unload = await c.post("/v2/repository/models/intent/unload", headers=AUTH)
            load = await c.post("/v2/repository/models/intent/load", headers=AUTH)
            still = await c.post("/v2/models/intent/infer", json=INFER)
            return unload, load, still

    unload, load, still = run(main())
    assert unload.status_code == 403 and "model control is disabled" in unload.json()["error"]
    assert load.status_code == 403
    assert still.status_code == 200  # nothing was unloaded


def test_explicit_model_control_needs_the_bearer_token(repo):
    async def main():
        async with serving(repo, model_control_mode="explicit", model_control_token=TOKEN) as c:
            none = await c.post("/v2/repository/models/intent/unload")
            wrong = await c.post(
                "/v2/repository/models/intent/unload", headers={"Authorization": "Bearer not-the-token"}
            )
            basic = await c.post(
                "/v2/repository/models/intent/unload", headers={"Authorization": f"Basic {TOKEN}"}
            )
            serving_after_refusals = (await c.post("/v2/models/intent/infer", json=INFER)).status_code
            ok = await c.post("/v2/repository/models/intent/unload", headers=AUTH)
            gone = await c.post("/v2/models/intent/infer", json=INFER)
            back = await c.post("/v2/repository/models/intent/load", headers=AUTH)
            return none, wrong, basic, serving_after_refusals, ok, gone, back

    none, wrong, basic, serving_after_refusals, ok, gone, back = run(main())
    for refused in (none, wrong, basic):
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        assert "Authorization: Bearer" in refused.json()["error"]
        assert TOKEN not in refused.text
    assert serving_after_refusals == 200
    assert ok.status_code == 200 and gone.status_code == 404 and back.status_code == 200


def test_explicit_mode_without_a_real_token_does_not_start():
    with pytest.raises(ValueError, match="model_control_token of 16"):
        WorkerSettings(model_control_mode="explicit")
    with pytest.raises(ValueError, match="model_control_token of 16") as e:
        WorkerSettings(model_control_mode="explicit", model_control_token="short-secret")
    assert "short-secret" not in str(e.value)  # the rejected value is not echoed


def test_model_names_cannot_leave_the_repository_and_errors_name_no_path(repo):
    (repo / "escape").symlink_to(repo.parent / "outside")  # a symlink pointing out of the repository

    async def main():
        async with serving(repo, model_control_mode="explicit", model_control_token=TOKEN) as c:
            dots = await c.post("/v2/repository/models/%2e%2e/load", headers=AUTH)
            encoded_slash = await c.post("/v2/repository/models/intent%2f..%2f..%2fetc/load", headers=AUTH)
            escape = await c.post("/v2/repository/models/escape/load", headers=AUTH)
            missing = await c.post("/v2/repository/models/nope/load", headers=AUTH)
            unload_dots = await c.post("/v2/repository/models/%2e%2e/unload", headers=AUTH)
            index = await c.post("/v2/repository/index")
            return dots, encoded_slash, escape, missing, unload_dots, index

    try:
        dots, encoded_slash, escape, missing, unload_dots, index = run(main())
    finally:
        (repo / "escape").unlink()
    assert dots.status_code == 400 and "invalid model name '..'" in dots.json()["error"]
    assert encoded_slash.status_code in (400, 404)
    assert escape.status_code == 400 and "points outside the model repository" in escape.json()["error"]
    assert missing.status_code == 400 and "no model named 'nope'" in missing.json()["error"]
    assert unload_dots.status_code == 400 and "invalid model name" in unload_dots.json()["error"]
    assert "escape" not in [m["name"] for m in index.json() if m["state"] == "READY"]
    for r in (dots, encoded_slash, escape, missing, unload_dots, index):
        for location in {str(repo), str(repo.resolve()), str(repo.parent)}:
            assert location not in r.text, r.text


def test_a_failed_reload_names_the_version_not_the_repository_path(repo, tmp_path):
    local = tmp_path / "repo"
    shutil.copytree(repo / "intent", local / "intent")
    shutil.copytree(local / "intent" / SHIPPED, local / "intent" / NEXT)
    (local / "intent" / NEXT / "labels.txt").write_text(
        "x\n", encoding="utf-8"
    )  # no longer matches its manifest

    async def main():
        async with serving(local, model_control_mode="explicit", model_control_token=TOKEN) as c:
            return await c.post("/v2/repository/models/intent/load", headers=AUTH)

    failed = run(main())
    assert failed.status_code == 400 and f"intent/{NEXT}: labels.txt has sha256" in failed.json()["error"]
    assert str(tmp_path) not in failed.text


# ---- item 9: what is public ---------------------------------------------------------------------------------


def test_docs_are_off_by_default_and_metrics_only_on_the_internal_port(repo):
    async def main():
        async with serving(repo) as c:
            public = [await c.get(p) for p in ("/docs", "/openapi.json", "/redoc", "/metrics")]
            await c.post("/v2/models/intent/infer", json=INFER)
            metrics = await c.internal.get("/metrics")
            ready = await c.internal.get("/v2/health/ready")
            not_there = await c.internal.post("/v2/models/intent/infer", json=INFER)
        async with serving(repo, docs_enabled=True) as c:
            enabled = [await c.get(p) for p in ("/docs", "/openapi.json")]
        return public, metrics, ready, not_there, enabled

    public, metrics, ready, not_there, enabled = run(main())
    assert [r.status_code for r in public] == [404, 404, 404, 404]
    assert metrics.status_code == 200
    assert f'kefu_worker_request_success_total{{model="intent",version="{SHIPPED}"}} 1.0' in metrics.text
    assert ready.status_code == 200 and not_there.status_code == 404  # the internal port serves no inference
    assert [r.status_code for r in enabled] == [200, 200]


# ---- issue 14 item 2: readiness and inference notice a dead or hung engine ----------------------------------


def engine_factory(repo: Path, timeout_s: float):
    def build(version):
        engine = EngineProcessBackend(str(repo), version.name, version.version, "fake")
        engine.call_timeout_s = timeout_s
        return engine

    return build


ENGINE_SETTINGS = {
    "engine_timeout_s": 1.0,
    "ready_cache_s": 0.0,
    "ready_probe_timeout_s": 0.3,
    "engine_check_interval_s": 0.2,
    "request_timeout_ms": 6000,
    "max_queue_delay_ms": 0,
}


async def wait_ready(c, timeout_s: float = 60) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        r = await c.get("/v2/models/intent/ready")
        if r.status_code == 200 or time.monotonic() > deadline:
            return r.status_code
        await asyncio.sleep(0.1)


@pytest.mark.slow  # starts processes
def test_a_hung_engine_is_not_ready_and_its_requests_fail_503_in_bounded_time(repo):
    async def main():
        async with serving(repo, engine_factory(repo, 1.0), **ENGINE_SETTINGS) as c:
            before = await c.get("/v2/models/intent/ready")
            first = await c.post("/v2/models/intent/infer", json=INFER)
            pid = c.manager.get("intent").backend._proc.pid
            os.kill(pid, signal.SIGSTOP)  # the engine process lives on but never answers
            try:
                model_ready = await c.get("/v2/models/intent/ready")
                server_ready = await c.get("/v2/health/ready")
                t0 = time.monotonic()
                hung = await c.post("/v2/models/intent/infer", json=INFER)
                elapsed = time.monotonic() - t0
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
            recovered = await wait_ready(c)
            after = await c.post("/v2/models/intent/infer", json=INFER)
            return before, first, model_ready, server_ready, hung, elapsed, recovered, after

    before, first, model_ready, server_ready, hung, elapsed, recovered, after = run(main())
    assert before.status_code == 200 and first.status_code == 200
    assert model_ready.status_code == 503 and model_ready.json() == {"name": "intent", "ready": False}
    assert server_ready.status_code == 503
    assert hung.status_code == 503 and hung.headers["retry-after"] == "1", hung.text
    assert "restart" in hung.json()["error"]
    assert elapsed < 3.0  # engine_timeout_s (1 s) and a little, not the 6 s request deadline
    assert recovered == 200, "the watchdog did not replace the hung engine"
    assert (
        after.status_code == 200 and after.json()["outputs"][0]["data"] == first.json()["outputs"][0]["data"]
    )


@pytest.mark.slow  # starts processes
def test_a_dead_engine_is_not_ready_per_model_and_refuses_at_once(repo):
    async def main():
        settings = {**ENGINE_SETTINGS, "engine_check_interval_s": 0}  # no watchdog: the state stays dead
        async with serving(repo, engine_factory(repo, 1.0), **settings) as c:
            proc = c.manager.get("intent").backend._proc
            os.kill(proc.pid, signal.SIGKILL)
            await asyncio.to_thread(proc.join, 5)
            model_ready = await c.get("/v2/models/intent/ready")
            version_ready = await c.get("/v2/models/intent/versions/1/ready")
            t0 = time.monotonic()
            refused = await c.post("/v2/models/intent/infer", json=INFER)
            return model_ready, version_ready, refused, time.monotonic() - t0

    model_ready, version_ready, refused, elapsed = run(main())
    assert model_ready.status_code == 503 and version_ready.status_code == 503
    assert refused.status_code == 503 and "not answering" in refused.json()["error"] and elapsed < 0.5


# ---- items 4 and 6: a real server on loopback -----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    """`python -m services.worker` with the fake backend; new settings come from the environment."""
    port, internal = free_port(), free_port()
    log_path = tmp_path_factory.mktemp("worker-log") / "worker.log"
    env = {
        **os.environ,
        "KEFU_WORKER_INTERNAL_PORT": str(internal),
        "KEFU_WORKER_MAX_BODY_BYTES": str(1 << 20),
        "KEFU_WORKER_MAX_HEADER_BYTES": "16384",
        "KEFU_WORKER_LOG_LEVEL": "info",
    }
    argv = [sys.executable, "-m", "services.worker", "--repository", str(repo), "--models", "intent"]
    argv += ["--backend", "fake", "--port", str(port), "--log-level", "info"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log_path.read_text()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        yield {"port": port, "internal": internal, "pid": proc.pid, "log": log_path}
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def exchange(port: int, head: bytes, body_chunks=(), timeout_s: float = 5.0) -> tuple[bytes, int, float]:
    """Send a request head (and body chunks, from a thread) and read the answer while sending; returns the
    answer's status line, the body bytes the server let us send, and the seconds until the status line."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    sent = 0

    def send_body():
        nonlocal sent
        with contextlib.suppress(OSError):
            for chunk in body_chunks:
                sock.sendall(chunk)
                sent += len(chunk)

    t0 = time.monotonic()
    try:
        sock.sendall(head)
        sender = threading.Thread(target=send_body, daemon=True)
        sender.start()
        answer = b""
        with contextlib.suppress(OSError):
            while b"\r\n" not in answer:
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
        elapsed = time.monotonic() - t0
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        elapsed = time.monotonic() - t0
    finally:
        sock.close()
    sender.join(10)
    return answer.split(b"\r\n", 1)[0], sent, elapsed


@pytest.mark.slow  # starts processes
def test_an_oversize_header_is_refused_431_before_it_is_read(server):
    big = b"x" * (64 * 1024 + 1)
    head = b"GET /v2/health/live HTTP/1.1\r\nHost: w\r\nX-Big: " + big + b"\r\n\r\n"
    status, _, elapsed = exchange(server["port"], head)
    assert status.startswith(b"HTTP/1.1 431"), status
    assert elapsed < 2.0
    status, _, _ = exchange(server["internal"], head)
    assert status.startswith(b"HTTP/1.1 431"), status  # the internal port too


@pytest.mark.slow  # starts processes
def test_a_huge_declared_body_is_refused_413_without_reading_it(server):
    head = (
        b"POST /v2/models/intent/infer HTTP/1.1\r\nHost: w\r\nContent-Type: application/json\r\n"
        b"Content-Length: 10000000000\r\n\r\n"
    )
    status, _, elapsed = exchange(server["port"], head, timeout_s=5)
    assert status.startswith(b"HTTP/1.1 413"), status
    assert elapsed < 2.0


@pytest.mark.slow  # starts processes
def test_a_chunked_body_over_the_limit_is_refused_while_streaming_without_growing_memory(server):
    rss_before = psutil.Process(server["pid"]).memory_info().rss
    total = 64 * 1024 * 1024
    chunk = b"%x\r\n" % (1 << 16) + b"a" * (1 << 16) + b"\r\n"
    chunks = [chunk] * (total >> 16) + [b"0\r\n\r\n"]
    head = (
        b"POST /v2/models/intent/infer HTTP/1.1\r\nHost: w\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    status, sent, elapsed = exchange(server["port"], head, chunks, timeout_s=20)
    rss_growth = psutil.Process(server["pid"]).memory_info().rss - rss_before
    assert status.startswith(b"HTTP/1.1 413"), status
    assert sent < total // 2  # refused while the client was still sending, not after reading it all
    assert rss_growth < 16 * 1024 * 1024, f"server RSS grew by {rss_growth >> 20} MiB"
    assert httpx.get(f"http://127.0.0.1:{server['port']}/v2/health/live").status_code == 200


@pytest.mark.slow  # starts processes
def test_access_log_has_routes_not_query_strings_or_headers(server):
    base = f"http://127.0.0.1:{server['port']}"
    secret_query = "api_key=sk-live-abcdef123456&email=li.lei@example.com&phone=139.1287.6543"
    r = httpx.post(
        f"{base}/v2/models/intent/infer?{secret_query}",
        json=INFER,
        headers={"Authorization": "Bearer tok-9f8e7d"},
    )
    assert r.status_code == 200
    httpx.get(f"{base}/v2/models/intent/ready?token=sk-live-abcdef123456")
    deadline = time.monotonic() + 10
    while "/v2/models/intent/ready" not in server["log"].read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    log = server["log"].read_text()
    assert "POST /v2/models/intent/infer 200" in log and "GET /v2/models/intent/ready 200" in log
    for leak in ("sk-live-abcdef123456", "li.lei@example.com", "139.1287.6543", "tok-9f8e7d", "api_key"):
        assert leak not in log, leak


@pytest.mark.slow  # starts processes
def test_two_server_processes_serve_both_ports_and_metrics_add_up(repo, tmp_path):
    """--processes 2: both processes share both sockets; whichever answers a scrape reports all requests."""
    port, internal = free_port(), free_port()
    env = {**os.environ, "KEFU_WORKER_INTERNAL_PORT": str(internal)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    argv = [sys.executable, "-m", "services.worker", "--repository", str(repo), "--models", "intent"]
    argv += ["--backend", "fake", "--port", str(port), "--processes", "2"]
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, log_path.read_text()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        answered = 0
        for _ in range(12):  # new connections: the kernel spreads them over both processes
            with httpx.Client() as client:
                answered += (
                    client.post(f"http://127.0.0.1:{port}/v2/models/intent/infer", json=INFER).status_code
                    == 200
                )
        scrapes = []
        for _ in range(4):
            with httpx.Client() as client:
                scrapes.append(client.get(f"http://127.0.0.1:{internal}/metrics").text)
        public_metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").status_code
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert answered == 12 and public_metrics == 404
    for text in scrapes:
        assert f'kefu_worker_request_success_total{{model="intent",version="{SHIPPED}"}} 12.0' in text


def test_one_worker_process_is_given_its_settings_not_the_environment(repo, monkeypatch):
    """`python -m services.worker` with one process builds the app from its settings object and hands uvicorn
    the app itself; only --processes N > 1 (spawned server processes) passes settings through the environment."""
    import os

    from services.worker import __main__ as worker_main
    from services.worker.app import PortDispatch

    for name in [k for k in os.environ if k.startswith("KEFU_WORKER_")]:
        monkeypatch.delenv(name)
    served = {}

    class FakeServer:
        def __init__(self, config):
            served["config"] = config

        def run(self, sockets):
            served["sockets"] = sockets
            for s in sockets:
                s.close()

    monkeypatch.setattr(worker_main.uvicorn, "Server", FakeServer)
    before = {k: v for k, v in os.environ.items() if k.startswith("KEFU_WORKER_")}
    argv = ["--repository", str(repo), "--backend", "fake", "--models", "intent", "--port", "0"]
    assert worker_main.main([*argv, "--internal-port", "0"]) == 0
    assert isinstance(served["config"].app, PortDispatch) and served["config"].factory is False
    assert {k: v for k, v in os.environ.items() if k.startswith("KEFU_WORKER_")} == before == {}
