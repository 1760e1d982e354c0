"""Gateway benchmark: closed-loop load on `POST /v1/chat` at concurrency 8 / 32 / 64 (`make bench-gateway`).

    python -m bench.gateway_bench --repository model_repository            # starts its own local stack
    python -m bench.gateway_bench --url http://127.0.0.1:8000 --key KEY     # a stack already running

The stack it starts is `python -m services.gateway.stack` (worker + milvus-lite + gateway) on free loopback
ports, with the response cache off (`KEFU_GATEWAY_CACHE_ENABLED=false`, so every request does the real work:
three model calls and a knowledge-base search) and a throw-away API key without a practical rate limit. Against
`--url` the caller's key and cache settings apply (the demo key is limited to 20 requests/s).

Messages: the 224 demo knowledge-base queries (`data/faq_kb_demo/queries_dev.jsonl`) and the intent demo dev
texts (`data/intent_cs_demo/dev.jsonl`), shuffled once (seed 0), each sent in a session of its own client.
Accounting is `bench/loadgen.py`'s: after `--warmup` seconds not counted, over `--duration` seconds,
throughput = successful answers received in the window / duration; p50 / p99 of the successful ones; errors =
non-200 answers and transport errors of requests started in the window. Each level also reports where the time
goes: the mean of every `Server-Timing` entry (total, gateway = time with no upstream call in flight, intent,
sentiment, faq_embed, faq_store; the upstream calls overlap). The load generator is Python on the same machine:
on 2 cores it takes CPU from the servers it measures.

Prints one line per level and writes `bench/results/gateway-<UTC timestamp>.json`:
`{"rows": [{"concurrency", "throughput_rps", "p50_ms", "p99_ms", "errors", "requests", "statuses",
"server_timing_ms"}], ...}`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx
import numpy as np
import yaml

from bench.loadgen import check_loopback

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DEMO_KEY = "kefu-demo-key-change-me"


def messages(seed: int = 0) -> list[str]:
    def column(path: str, name: str) -> list[str]:
        lines = (ROOT / path).read_text("utf-8").splitlines()
        return [json.loads(line)[name] for line in lines if line.strip()]

    texts = column("data/faq_kb_demo/queries_dev.jsonl", "query") + column(
        "data/intent_cs_demo/dev.jsonl", "text"
    )
    random.Random(seed).shuffle(texts)
    return texts


def parse_server_timing(header: str) -> dict[str, float]:
    out = {}
    for part in header.split(","):
        name, _, rest = part.strip().partition(";dur=")
        if name and rest:
            try:
                out[name] = float(rest)
            except ValueError:
                pass
    return out


async def closed_loop(
    url: str,
    key: str,
    texts: list[str],
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    timeout_s: float,
) -> dict:
    bodies = [
        json.dumps({"session_id": f"bench-{i}", "text": t}, ensure_ascii=False).encode("utf-8")
        for i, t in enumerate(texts)
    ]
    headers = {"content-type": "application/json", "x-api-key": key}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    records: list[tuple[float, float, bool]] = []
    statuses: Counter[str] = Counter()
    timings: dict[str, list[float]] = defaultdict(list)
    cursor = 0
    start = time.perf_counter()
    window_start, window_end = start + warmup_s, start + warmup_s + duration_s

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal cursor
        while (sent := time.perf_counter()) < window_end:
            body = bodies[cursor % len(bodies)]
            cursor += 1
            try:
                response = await client.post(url + "/v1/chat", content=body, headers=headers)
                ok, status = response.status_code == 200, str(response.status_code)
            except httpx.HTTPError as e:
                ok, status, response = False, type(e).__name__, None
            done = time.perf_counter()
            records.append((sent, done, ok))
            if sent >= window_start:
                statuses[status] += 1
                if ok and response is not None:
                    for name, ms in parse_server_timing(response.headers.get("server-timing", "")).items():
                        timings[name].append(ms)
            if not ok:
                await asyncio.sleep(0.01)

    async def progress() -> None:
        while time.perf_counter() < window_end:
            await asyncio.sleep(5)
            print(f"   ... c={concurrency}: {len(records)} requests so far", flush=True)

    timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0))
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        ticker = asyncio.ensure_future(progress())
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        ticker.cancel()
    measured = [r for r in records if r[0] >= window_start]
    latencies = np.array([(end - sent) * 1000 for sent, end, ok in measured if ok])
    answered = sum(1 for _, end, ok in records if ok and window_start <= end <= window_end)
    return {
        "concurrency": concurrency,
        "throughput_rps": round(answered / duration_s, 2),
        "p50_ms": round(float(np.percentile(latencies, 50)), 2) if len(latencies) else None,
        "p99_ms": round(float(np.percentile(latencies, 99)), 2) if len(latencies) else None,
        "errors": sum(1 for *_, ok in measured if not ok),
        "requests": len(measured),
        "statuses": dict(statuses),
        "server_timing_ms": {name: round(float(np.mean(v)), 2) for name, v in timings.items()},
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalStack:
    """`services.gateway.stack` on free ports, cache off, with a fresh high-rate API key."""

    def __init__(self, repository: Path, workdir: Path, worker_processes: int):
        self.key = "bench-" + secrets.token_urlsafe(16)
        keys = workdir / "api_keys.yaml"
        digest = hashlib.sha256(self.key.encode()).hexdigest()
        record = {
            "tenant": "bench",
            "sha256": digest,
            "scopes": ["chat"],
            "rate_per_s": 1e6,
            "burst": 1000000,
        }
        keys.write_text(yaml.safe_dump({"keys": [record]}), "utf-8")
        port, worker_port, internal, worker_internal = free_port(), free_port(), free_port(), free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.internal_url = f"http://127.0.0.1:{internal}"  # the detailed /readyz
        argv = [sys.executable, "-m", "services.gateway.stack", "--repository", str(repository)]
        argv += [
            "--port",
            str(port),
            "--worker-port",
            str(worker_port),
            "--internal-port",
            str(internal),
            "--worker-internal-port",
            str(worker_internal),
            "--data-dir",
            str(workdir),
            "--quiet",
        ]
        argv += ["--worker-processes", str(worker_processes)]
        argv += [
            "--extra-env",
            "KEFU_GATEWAY_CACHE_ENABLED=false",
            "--extra-env",
            f"KEFU_GATEWAY_API_KEYS_FILE={keys}",
        ]
        argv += ["--extra-env", "KEFU_GATEWAY_LOG_LEVEL=warning"]
        self.proc = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def wait_ready(self, timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the stack exited with code {self.proc.returncode}")
            try:
                body = httpx.get(self.internal_url + "/readyz", timeout=5).json()
                if body.get("status") == "ready":
                    return body
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(1)
        raise RuntimeError(f"the stack was not ready after {timeout_s:.0f} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gateway_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--repository", type=Path, default=Path("model_repository"), help="for the local stack")
    p.add_argument("--url", default=None, help="a running gateway (loopback only) instead of a local stack")
    p.add_argument("--key", default=DEMO_KEY, help="API key for --url (scope chat)")
    p.add_argument(
        "--internal-url",
        default="http://127.0.0.1:9000",
        help="that gateway's internal port (detailed /readyz)",
    )
    p.add_argument("--concurrency", default="8,32,64", help="comma-separated levels")
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds per level")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds per level sent but not counted")
    p.add_argument("--timeout", type=float, default=30.0, help="per request, seconds")
    p.add_argument("--worker-processes", type=int, default=1, help="worker server processes (local stack)")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = p.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    texts = messages()
    stack = None
    workdir = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    try:
        if args.url:
            check_loopback(args.url)
            url, key, internal_url = args.url.rstrip("/"), args.key, args.internal_url.rstrip("/")
        else:
            print(f">> starting the local stack (logs in {workdir})", flush=True)
            stack = LocalStack(args.repository.resolve(), workdir, args.worker_processes)
            stack.wait_ready(900)
            url, key, internal_url = stack.url, stack.key, stack.internal_url
        info = httpx.get(
            internal_url + "/readyz", timeout=5
        ).json()  # models and knowledge base for the record
        rows = []
        for c in levels:
            print(
                f">> c={c}: {args.warmup:g} s warm-up + {args.duration:g} s measured on {url}/v1/chat",
                flush=True,
            )
            row = asyncio.run(closed_loop(url, key, texts, c, args.duration, args.warmup, args.timeout))
            rows.append(row)
            st = row["server_timing_ms"]
            where = ", ".join(f"{k} {v:.1f}" for k, v in st.items())
            print(
                f"   c={c:>3}  {row['throughput_rps']:8.1f} req/s  p50 {row['p50_ms']} ms  p99 {row['p99_ms']} ms  "
                f"errors {row['errors']}  | mean ms: {where}",
                flush=True,
            )
    except (RuntimeError, ValueError, OSError, httpx.HTTPError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if stack is not None:
            stack.stop()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    result = {
        "rows": rows,
        "benchmark": "gateway /v1/chat closed loop",
        "target": args.url or "local stack (cache off)",
        "messages": len(texts),
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "cpus": os.cpu_count(),
        "models": info.get("upstreams"),
        "knowledge_base": info.get("knowledge_base"),
        "at": stamp,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"gateway-{stamp}.json"
    path.write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n", "utf-8")
    print(f">> written {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
