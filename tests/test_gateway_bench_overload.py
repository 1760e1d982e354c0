"""bench.gateway_bench's python driver times the 503 `overloaded` answers on their own, and comes back after
Retry-After like a well-behaved client (issue 14 item 7)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable

from bench.gateway_bench import closed_loop

REFUSED = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-length: 2\r\n\r\n{}"
OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"


async def fake_gateway(answer: Callable[[int], Awaitable[bytes]]):
    """A keep-alive HTTP/1.1 server answering the n-th request (from 0, over all connections) `answer(n)`."""
    counter = itertools.count()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                await reader.readexactly(length)
                writer.write(await answer(next(counter)))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0), counter


def drive(answer: Callable[[int], Awaitable[bytes]]) -> tuple[dict, int]:
    """4 clients, 0.2 s warm-up + 1 s measured against `fake_gateway(answer)`: (the row, requests served)."""

    async def main() -> tuple[dict, int]:
        server, counter = await fake_gateway(answer)
        port = server.sockets[0].getsockname()[1]
        async with server:
            row = await closed_loop(f"http://127.0.0.1:{port}", "k", ["你好"], 4, 1.0, 0.2, 5.0)
        return row, next(counter)

    return asyncio.run(main())


def test_refused_answers_are_timed_apart_from_admitted_ones():
    async def every_other_refused(n: int) -> bytes:  # refused at once, admitted after 50 ms
        if n % 2:
            return REFUSED
        await asyncio.sleep(0.05)
        return OK

    row, _ = drive(every_other_refused)
    assert row["refused"] > 0 and row["refused_with_retry_after"] == row["refused"]
    assert row["refused_p50_ms"] < 40 <= row["p50_ms"]
    assert row["p95_ms"] >= 45
    assert row["errors"] >= row["refused"]


def test_refused_clients_come_back_after_retry_after_not_at_once():
    """256 clients that retried a refusal 10 ms later (the old driver) made a retry storm the gateway spent its
    CPU refusing; a well-behaved client waits Retry-After (with jitter), and so does the load generator."""

    async def refuse_all(n: int) -> bytes:
        return REFUSED

    row, sent = drive(refuse_all)
    # 1.2 s, each client waiting 0.5-1.5 s after every refusal: at most 3 requests each
    assert 4 <= sent <= 12, sent
    assert row["refused"] == row["refused_with_retry_after"] > 0
