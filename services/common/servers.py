"""Several uvicorn servers in one process and one event loop: a public port and an internal one (metrics,
detailed health) serving apps that share their state.

    run_servers([ServerSpec(public_app, host, 8000, lifespan="on"), ServerSpec(internal_app, host, 9000)],
                max_header_bytes=32768, log_level="info")

Every server runs `http_limits.HeaderLimitedHttpTools` (431 for an oversize request head). SIGINT / SIGTERM
stop all of them gracefully; when one stops on its own (its port is taken, its app's start-up failed) the others
stop too and the exit code is 1. uvicorn's own per-server signal capture is off: with two servers it would
re-raise the signal once the first stopped and kill the process before the second finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import uvicorn

from services.common.http_limits import header_limited_protocol


@dataclass
class ServerSpec:
    app: Any  # an ASGI app
    host: str
    port: int
    lifespan: Literal["on", "off", "auto"] = "off"  # "on" for the app that owns the shared state's life cycle


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # run_servers handles the signals for all of them
        yield


def build_servers(
    specs: list[ServerSpec], *, max_header_bytes: int, log_level: str = "info", **config: Any
) -> list[uvicorn.Server]:
    """One uvicorn server per spec, all with the header limit (config: further uvicorn.Config options)."""
    protocol = header_limited_protocol(max_header_bytes)
    return [
        _Server(
            uvicorn.Config(
                s.app,
                host=s.host,
                port=s.port,
                lifespan=s.lifespan,
                http=protocol,
                log_level=log_level,
                **config,
            )
        )
        for s in specs
    ]


async def serve_all(servers: list[uvicorn.Server]) -> int:
    """Serves until a signal (exit code 0) or until one server stops by itself (1); then stops the rest."""
    loop = asyncio.get_running_loop()
    stopped_by_signal = False

    def stop(by_signal: bool = False) -> None:
        nonlocal stopped_by_signal
        stopped_by_signal = stopped_by_signal or by_signal
        for s in servers:
            if s.should_exit and by_signal:
                s.force_exit = True  # a second Ctrl-C
            s.should_exit = True

    async def one(server: uvicorn.Server) -> None:
        try:
            await server.serve()
        except SystemExit:  # uvicorn exits on a port in use or a failed lifespan start-up
            pass

    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop, True)
    tasks = [asyncio.create_task(one(s)) for s in servers]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        stop()
        await asyncio.gather(*tasks)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
    return 0 if stopped_by_signal else 1


def run_servers(
    specs: list[ServerSpec], *, max_header_bytes: int, log_level: str = "info", **config: Any
) -> int:
    """`build_servers` + `serve_all` in a new event loop (uvloop when installed, as uvicorn's `loop="auto"`
    picks; issue 15); returns the exit code."""
    servers = build_servers(specs, max_header_bytes=max_header_bytes, log_level=log_level, **config)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(serve_all(servers))


def _loop_factory():
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is in the serving set; plain asyncio works too
        return None
    return uvloop.new_event_loop
