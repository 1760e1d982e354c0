"""Gateway benchmark: closed-loop load on `POST /v1/chat` at concurrency 8 / 32 / 64 (`make bench-gateway`).

    python -m bench.gateway_bench --repository model_repository            # starts its own local stack
    python -m bench.gateway_bench --url http://127.0.0.1:8000 --key KEY     # a stack already running
    python -m bench.gateway_bench --driver python                           # the asyncio client instead of wrk

The stack it starts is `python -m services.stack` (worker + milvus-lite + gateway) on free loopback
ports, with the response cache off (`KEFU_GATEWAY_CACHE_ENABLED=false`, so every request does the real work:
three model calls and a knowledge-base search) and a throw-away API key without a practical rate limit. Against
`--url` the caller's key and cache settings apply (the demo key is limited to 20 requests/s).

Load generator (`--driver`): `wrk` (the default when it is installed: C, a few % of one core) with a Lua
script that walks the messages, or `python` (httpx closed loop, which on 2 cores takes CPU from the servers it
measures). Both report throughput = successful answers / measured seconds and p50 / p99 of the answers.

Per-process CPU per chat (local stack only): the CPU seconds (user + system, `psutil`) each process of the
stack used during the measured window, divided by the chats answered in it: `gateway`, `worker` (its HTTP
server processes), `engines` (the worker's engine processes), `faq_store` (milvus-lite server), and the
load generator (`loadgen`). Reported per level as `cpu_ms_per_chat`.

Messages: the 224 demo knowledge-base queries (`data/faq_kb_demo/queries_dev.jsonl`) and the intent demo dev
texts (`data/intent_cs_demo/dev.jsonl`), shuffled once (seed 0), each sent in a session of its own client.
Accounting is `bench/loadgen.py`'s: after `--warmup` seconds not counted, over `--duration` seconds,
throughput = successful answers received in the window / duration; p50 / p99 of the successful ones; errors =
non-200 answers and transport errors of requests started in the window; with `--driver python` the 503
`overloaded` answers are also timed on their own (refused p50 / p99, how many carried Retry-After) beside the
admitted answers' p95: what an overloaded gateway costs a refused client. Each level also reports where the time
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
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import aiohttp
import httpx
import numpy as np
import psutil
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
    records: list[tuple[float, float, bool]] = []
    refused: list[tuple[float, float, bool]] = []  # 503 answers: (sent, done, had Retry-After)
    statuses: Counter[str] = Counter()
    timings: dict[str, list[float]] = defaultdict(list)
    cursor = 0
    start = time.perf_counter()
    window_start, window_end = start + warmup_s, start + warmup_s + duration_s
    rng = random.Random(0)
    timeout = aiohttp.ClientTimeout(total=timeout_s, connect=min(timeout_s, 10.0))

    async def worker() -> None:
        """One client on its own keep-alive connection (no shared pool to contend for). A 503 with
        Retry-After is retried after that many seconds, as a well-behaved client does."""
        nonlocal cursor
        connector = aiohttp.TCPConnector(limit=1, force_close=False)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            while (sent := time.perf_counter()) < window_end:
                body = bodies[cursor % len(bodies)]
                cursor += 1
                retry_after = None
                try:
                    async with session.post(url + "/v1/chat", data=body, headers=headers) as response:
                        await response.read()
                        code = response.status
                        ok, status = code == 200, str(code)
                        server_timing = response.headers.get("server-timing", "")
                        retry_after = response.headers.get("retry-after")
                except (aiohttp.ClientError, TimeoutError) as e:
                    ok, status, code = False, type(e).__name__, None
                done = time.perf_counter()
                records.append((sent, done, ok))
                if code == 503:
                    refused.append((sent, done, retry_after is not None))
                if sent >= window_start:
                    statuses[status] += 1
                    if ok:
                        for name, ms in parse_server_timing(server_timing).items():
                            timings[name].append(ms)
                if not ok:
                    # Retry-After with jitter (× 0.5–1.5), as client libraries do: without it every refused
                    # client comes back in the same millisecond, a wave the next refusal waits behind
                    wait = (
                        float(retry_after) * rng.uniform(0.5, 1.5)
                        if retry_after and retry_after.isdigit()
                        else 0.01
                    )
                    await asyncio.sleep(min(wait, max(0.0, window_end - time.perf_counter())))

    async def progress() -> None:
        while time.perf_counter() < window_end:
            await asyncio.sleep(5)
            print(f"   ... c={concurrency}: {len(records)} requests so far", flush=True)

    ticker = asyncio.ensure_future(progress())
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    ticker.cancel()
    measured = [r for r in records if r[0] >= window_start]
    latencies = np.array([(end - sent) * 1000 for sent, end, ok in measured if ok])
    answered = sum(1 for _, end, ok in records if ok and window_start <= end <= window_end)
    shed = [r for r in refused if r[0] >= window_start]
    shed_ms = np.array([(end - sent) * 1000 for sent, end, _ in shed])
    overload = {}
    if len(shed):  # what a refused client waits for its 503 (issue 14 item 7: within 100 ms)
        overload = {
            "refused": len(shed),
            "refused_p50_ms": round(float(np.percentile(shed_ms, 50)), 2),
            "refused_p99_ms": round(float(np.percentile(shed_ms, 99)), 2),
            "refused_with_retry_after": sum(1 for *_, retry in shed if retry),
        }
    return overload | {
        "concurrency": concurrency,
        "throughput_rps": round(answered / duration_s, 2),
        "p50_ms": round(float(np.percentile(latencies, 50)), 2) if len(latencies) else None,
        "p95_ms": round(float(np.percentile(latencies, 95)), 2) if len(latencies) else None,
        "p99_ms": round(float(np.percentile(latencies, 99)), 2) if len(latencies) else None,
        "errors": sum(1 for *_, ok in measured if not ok),
        "requests": len(measured),
        "statuses": dict(statuses),
        "server_timing_ms": {name: round(float(np.mean(v)), 2) for name, v in timings.items()},
    }


WRK_SCRIPT = """
local bodies = {%s}
local cursor = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-API-Key"] = "%s"
function setup(thread)
  thread:set("offset", math.random(1, #bodies))
end
request = function()
  if cursor == 0 then cursor = offset end
  cursor = cursor %% #bodies + 1
  return wrk.format(nil, "/v1/chat", nil, bodies[cursor])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRK {\\"completed\\": %%d, \\"duration_us\\": %%d, \\"connect\\": %%d, \\"read\\": %%d, \\"write\\": %%d, " ..
    "\\"status\\": %%d, \\"timeout\\": %%d, \\"p50_us\\": %%d, \\"p99_us\\": %%d}\\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def wrk_script(texts: list[str], key: str) -> str:
    """A Lua script for wrk: POST /v1/chat walking the messages (each in its own session), JSON on done()."""
    bodies = [
        json.dumps({"session_id": f"bench-{i}", "text": t})  # ASCII (\\u escapes): safe in a Lua long string
        for i, t in enumerate(texts)
    ]
    return WRK_SCRIPT % (", ".join(f"[==[{b}]==]" for b in bodies), key)


def run_wrk(url: str, script: Path, concurrency: int, duration_s: float, timeout_s: float) -> dict:
    """One wrk run; returns its done() summary."""
    threads = max(1, min(2, concurrency))
    argv = ["wrk", "-t", str(threads), "-c", str(concurrency), "-d", f"{duration_s:g}s"]
    argv += ["--timeout", f"{timeout_s:g}s", "-s", str(script), url]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("WRK ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout[-500:]}")
    return json.loads(line[4:])


def wrk_level(url: str, key: str, texts: list[str], concurrency: int, args, sampler) -> dict:
    """Warm-up run (not counted), then the measured run with the stack's CPU sampled around it."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False, encoding="utf-8") as f:
        f.write(wrk_script(texts, key))
    script = Path(f.name)
    try:
        if args.warmup > 0:
            run_wrk(url, script, concurrency, args.warmup, args.timeout)
        before = sampler()
        summary = run_wrk(url, script, concurrency, args.duration, args.timeout)
        after = sampler()
    finally:
        script.unlink(missing_ok=True)
    errors = sum(summary[k] for k in ("connect", "read", "write", "status", "timeout"))
    answered = summary["completed"] - summary["status"]
    seconds = summary["duration_us"] / 1e6
    row = {
        "concurrency": concurrency,
        "driver": "wrk",
        "throughput_rps": round(answered / seconds, 2),
        "p50_ms": round(summary["p50_us"] / 1000, 2),
        "p99_ms": round(summary["p99_us"] / 1000, 2),
        "errors": errors,
        "requests": summary["completed"],
        "statuses": {"non_2xx": summary["status"], "timeout": summary["timeout"]},
        "server_timing_ms": {},
    }
    return row | cpu_per_chat(before, after, answered)


def stack_processes(root_pid: int) -> dict[str, list[psutil.Process]]:
    """The stack's processes by part: gateway, worker (HTTP servers), engines (their children), faq_store."""
    parts: dict[str, list[psutil.Process]] = defaultdict(list)
    try:
        root = psutil.Process(root_pid)
        children = root.children(recursive=True)
    except psutil.Error:
        return parts
    for proc in children:
        try:
            cmd = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        if "milvus" in cmd:
            parts["faq_store"].append(proc)
        elif "services.worker" in cmd:
            parts["worker"].append(proc)
            parts["engines"].extend(c for c in proc.children(recursive=True) if c not in parts["worker"])
        elif "services.gateway" in cmd:
            parts["gateway"].append(proc)
    workers = {p.pid for p in parts["worker"]}
    parts["engines"] = [p for p in {p.pid: p for p in parts["engines"]}.values() if p.pid not in workers]
    return parts


def cpu_sampler(parts: dict[str, list[psutil.Process]], loadgen: str = "wrk"):
    """A function returning {part: CPU seconds so far} for the stack's parts and the load generator."""

    def seconds(procs: list[psutil.Process]) -> float:
        total = 0.0
        for p in procs:
            try:
                t = p.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
            except psutil.Error:
                pass
        return total

    def sample() -> dict[str, float]:
        out = {name: seconds(procs) for name, procs in parts.items()}
        if loadgen == "python":
            out["loadgen"] = seconds([psutil.Process()])
        else:  # wrk children of this process have exited: their CPU is in our children_* times
            t = psutil.Process().cpu_times()
            out["loadgen"] = t.children_user + t.children_system
        return out

    return sample


def cpu_per_chat(before: dict[str, float], after: dict[str, float], answered: int) -> dict:
    if not before or not answered:
        return {}
    used = {k: after.get(k, 0.0) - v for k, v in before.items()}
    return {
        "cpu_ms_per_chat": {k: round(v * 1000 / answered, 2) for k, v in used.items()},
        "cpu_s": {k: round(v, 2) for k, v in used.items()},  # CPU seconds in the window
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalStack:
    """`services.stack` on free ports, cache off, with a fresh high-rate API key."""

    def __init__(
        self, repository: Path, workdir: Path, worker_processes: int, extra_env: tuple[str, ...] = ()
    ):
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
        argv = [sys.executable, "-m", "services.stack", "--repository", str(repository)]
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
        for pair in extra_env:
            argv += ["--extra-env", pair]
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
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment of the local stack's gateway, e.g. KEFU_FAQ_SEARCH_CACHE_SIZE=0 (repeatable)",
    )
    p.add_argument(
        "--driver",
        choices=("wrk", "python"),
        default="wrk" if shutil.which("wrk") else "python",
        help="load generator (default: wrk when installed)",
    )
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
            stack = LocalStack(args.repository.resolve(), workdir, args.worker_processes, tuple(args.env))
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
            parts = stack_processes(stack.proc.pid) if stack is not None else {}
            sampler = cpu_sampler(parts, args.driver) if parts else dict
            if args.driver == "wrk":
                row = wrk_level(url, key, texts, c, args, sampler)
            else:
                before = sampler()
                row = asyncio.run(closed_loop(url, key, texts, c, args.duration, args.warmup, args.timeout))
                row |= cpu_per_chat(before, sampler(), round(row["throughput_rps"] * args.duration))
            rows.append(row)
            st = row["server_timing_ms"]
            where = ", ".join(f"{k} {v:.1f}" for k, v in st.items())
            print(
                f"   c={c:>3}  {row['throughput_rps']:8.1f} req/s  p50 {row['p50_ms']} ms  p99 {row['p99_ms']} ms  "
                f"errors {row['errors']}  | mean ms: {where}",
                flush=True,
            )
            if row.get("refused"):
                print(
                    f"         admitted p95 {row['p95_ms']} ms; refused 503: {row['refused']} "
                    f"(p50 {row['refused_p50_ms']} ms, p99 {row['refused_p99_ms']} ms, "
                    f"{row['refused_with_retry_after']} with Retry-After)",
                    flush=True,
                )
            if "cpu_ms_per_chat" in row:
                per = ", ".join(f"{k} {v:.2f}" for k, v in row["cpu_ms_per_chat"].items())
                print(f"         CPU ms per chat: {per}", flush=True)
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
        "driver": args.driver,
        "env": args.env,
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
