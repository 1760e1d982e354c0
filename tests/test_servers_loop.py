"""The gateway's servers run on uvloop (issue 15 item 4): `run_servers` had fallen back to the plain asyncio loop
when it took over from `uvicorn.run`, costing CPU per chat."""

from __future__ import annotations

import asyncio

import uvloop

from services.common import servers


def test_run_servers_runs_on_uvloop(monkeypatch):
    async def serve_all(built):
        return 0 if isinstance(asyncio.get_running_loop(), uvloop.Loop) else 1

    monkeypatch.setattr(servers, "serve_all", serve_all)
    assert servers.run_servers([], max_header_bytes=8192) == 0
