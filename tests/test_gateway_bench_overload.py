"""bench.gateway_bench's python driver times the 503 `overloaded` answers on their own (issue 14 item 7)."""

from __future__ import annotations

import asyncio
import itertools

from bench.gateway_bench import closed_loop


async def fake_gateway(delay_ok_s: float):
    """Every other chat is refused at once with 503 + Retry-After; the others are answered after a delay."""
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
                if next(counter) % 2:
                    writer.write(
                        b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-length: 2\r\n\r\n{}"
                    )
                else:
                    await asyncio.sleep(delay_ok_s)
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def test_refused_answers_are_timed_apart_from_admitted_ones():
    async def main() -> dict:
        server = await fake_gateway(0.05)
        port = server.sockets[0].getsockname()[1]
        async with server:
            return await closed_loop(f"http://127.0.0.1:{port}", "k", ["你好"], 4, 1.0, 0.2, 5.0)

    row = asyncio.run(main())
    assert row["refused"] > 0 and row["refused_with_retry_after"] == row["refused"]
    assert row["refused_p50_ms"] < 40 <= row["p50_ms"]  # refused at once, admitted after 50 ms
    assert row["p95_ms"] >= 45
    assert row["errors"] >= row["refused"]


def test_refused_clients_come_back_after_retry_after_not_at_once():
    """256 clients that retried a refusal 10 ms later (the old driver) made a retry storm the gateway spent its
    CPU refusing; a well-behaved client waits Retry-After (with jitter), and so does the load generator."""
    seen = itertools.count()

    async def refuse_all(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                await reader.readexactly(length)
                next(seen)
                writer.write(
                    b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-length: 2\r\n\r\n{}"
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> dict:
        server = await asyncio.start_server(refuse_all, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            return await closed_loop(f"http://127.0.0.1:{port}", "k", ["你好"], 4, 1.0, 0.2, 5.0)

    row = asyncio.run(main())
    sent = next(seen)
    # 1.2 s, each client waiting 0.5-1.5 s after every refusal: at most 3 requests each
    assert 4 <= sent <= 12, sent
    assert row["refused"] == row["refused_with_retry_after"] > 0
