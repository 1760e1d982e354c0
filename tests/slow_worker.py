"""A fake inference worker as a real HTTP server, each inference taking `--delay-ms`: the upstream of a real
gateway process in the overload tests (a slow model keeps admission slots busy without using CPU).

    python -m tests.slow_worker --port 18001 --delay-ms 200

Answers as `tests/gateway_fakes.FakeWorkers` (intent, sentiment and faq metadata, ready, infer).
"""

from __future__ import annotations

import argparse
import asyncio

import httpx
import uvicorn

from tests.gateway_fakes import FakeWorkers


def build_app(url: str, delay_s: float):
    fakes = FakeWorkers([url])

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path = scope["path"]
        if not path.startswith("/v2/models/"):
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        request = httpx.Request(scope["method"], url + path, content=body)
        if path.endswith("/infer"):
            await asyncio.sleep(delay_s)
        response = fakes.handle(request)
        await send(
            {
                "type": "http.response.start",
                "status": response.status_code,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": response.content})

    return app


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--delay-ms", type=float, default=200)
    args = p.parse_args()
    url = f"http://127.0.0.1:{args.port}"
    app = build_app(url, args.delay_ms / 1000)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
