"""A real `redis-server` on a free loopback port, for tests of Redis-backed gateway state.

    from tests.redis_fixture import redis_client, redis_url  # noqa: F401  (pytest finds them by name)

`redis_url` (session scope) starts `/usr/bin/redis-server` (Debian package `redis-server`) with persistence
off, or skips with the reason when the binary is absent. `redis_client` is a fresh async client on it, with
the database flushed, for one (pytest-asyncio) test.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> Iterator[str]:
    if not Path(REDIS_SERVER).exists():
        pytest.skip("redis-server is not installed (apt-get install redis-server): Redis backends not tested")
    workdir = tmp_path_factory.mktemp("redis")
    for _attempt in range(3):  # another process may take the free port before redis binds it
        port = _free_port()
        log = (workdir / f"redis-{port}.log").open("wb")
        proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(workdir), "--protected-mode", "yes"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline and not _ping(port):
            time.sleep(0.05)
        if proc.poll() is None and _ping(port):
            break
        proc.kill()
        proc.wait()
        log.close()
    else:
        pytest.fail(f"redis-server did not start; see {workdir}")
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest_asyncio.fixture
async def redis_client(redis_url) -> AsyncIterator:
    from services.gateway.state.redis_conn import connect

    client = connect(redis_url, timeout_s=2.0)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()
