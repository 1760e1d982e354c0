"""Closed-loop HTTP load generator for Open Inference Protocol servers (the worker and the naive baseline).

    python -m bench.loadgen --url http://127.0.0.1:8001/v2/models/intent/infer --concurrency 8 \
        --duration 10 --warmup 2 --texts texts.jsonl

`concurrency` asyncio workers share one `httpx.AsyncClient` (HTTP/1.1 keep-alive, one connection per worker).
Each sends a single-text V2 infer request, waits for the answer, then sends the next (closed loop), walking the
texts in order from a shared cursor. Request bodies are serialised once up front so the generator spends its
CPU on HTTP only: it shares the machine with the server under test.

Accounting, after `warmup` seconds that are not counted, over a window of `duration` seconds:
  requests        requests started in the window (answered or failed)
  errors          of those, non-200 answers and transport errors / timeouts
  p50_ms, p99_ms  latency of the successful ones (send to full body received)
  throughput_rps  successful answers received inside the window (whenever sent) / duration
No request is started after the window; the ones in flight are awaited (each bounded by `--timeout`), so a run
lasts at most warmup + duration + timeout seconds. Prints one JSON line. Only loopback targets are accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np


def check_loopback(url: str) -> None:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise ValueError(
        f"the load generator only targets this machine (127.0.0.0/8, ::1, localhost), not {host!r}"
    )


def infer_body(text: str) -> bytes:
    payload = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [text]}]}
    return json.dumps(payload, ensure_ascii=False).encode("utf-8")


def read_texts(path: Path) -> list[str]:
    """JSONL of {"text": ...} objects (or of bare JSON strings); blank lines skipped."""
    texts = []
    for n, line in enumerate(path.read_text("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        text = row.get("text") if isinstance(row, dict) else row
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{path}:{n}: expected a JSON object with a non-empty 'text' string")
        texts.append(text)
    if not texts:
        raise ValueError(f"{path}: no texts")
    return texts


async def _run(
    url: str, bodies: list[bytes], concurrency: int, duration_s: float, warmup_s: float, timeout_s: float
) -> dict:
    limits = httpx.Limits(
        max_connections=concurrency, max_keepalive_connections=concurrency, keepalive_expiry=60
    )
    timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0))
    headers = {"content-type": "application/json"}
    records: list[tuple[float, float, bool]] = []  # (start, end, ok), perf_counter seconds
    statuses: Counter[str] = Counter()
    cursor = 0
    start = time.perf_counter()
    window_start = start + warmup_s
    window_end = window_start + duration_s

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal cursor
        while True:
            sent = time.perf_counter()
            if sent >= window_end:
                return
            body = bodies[cursor % len(bodies)]
            cursor += 1
            try:
                response = await client.post(url, content=body, headers=headers)
                ok = response.status_code == 200
                status = str(response.status_code)
            except httpx.HTTPError as e:
                ok, status = False, type(e).__name__
            done = time.perf_counter()
            records.append((sent, done, ok))
            if sent >= window_start:
                statuses[status] += 1
            if not ok:
                await asyncio.sleep(0.01)  # a refusing server (429/503) must not turn this into a busy loop

    async with httpx.AsyncClient(limits=limits, timeout=timeout, http1=True, http2=False) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))

    answered_in_window = sum(1 for _, end, ok in records if ok and window_start <= end <= window_end)
    measured = [r for r in records if r[0] >= window_start]
    latencies = np.array([(end - sent) * 1000 for sent, end, ok in measured if ok])
    errors = sum(1 for *_, ok in measured if not ok)
    return {
        "throughput_rps": round(answered_in_window / duration_s, 2),
        "p50_ms": round(float(np.percentile(latencies, 50)), 2) if len(latencies) else None,
        "p99_ms": round(float(np.percentile(latencies, 99)), 2) if len(latencies) else None,
        "errors": errors,
        "requests": len(measured),
        "concurrency": concurrency,
        "duration_s": duration_s,
        "warmup_s": warmup_s,
        "statuses": dict(statuses),
    }


def run_load(
    url: str,
    texts: list[str],
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    timeout_s: float = 30.0,
) -> dict:
    """Drive `url` closed-loop with `concurrency` workers; see the module docstring for what is counted."""
    check_loopback(url)
    if concurrency < 1 or duration_s <= 0 or warmup_s < 0 or timeout_s <= 0:
        raise ValueError("concurrency >= 1, duration > 0, warmup >= 0 and timeout > 0 are required")
    if not texts:
        raise ValueError("no texts to send")
    bodies = [infer_body(t) for t in texts]
    return asyncio.run(_run(url, bodies, concurrency, duration_s, warmup_s, timeout_s))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="e.g. http://127.0.0.1:8001/v2/models/intent/infer")
    p.add_argument("--texts", type=Path, required=True, help='JSONL, one {"text": ...} per line')
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds sent but not counted")
    p.add_argument("--timeout", type=float, default=30.0, help="per request, seconds")
    args = p.parse_args(argv)
    try:
        result = run_load(
            args.url, read_texts(args.texts), args.concurrency, args.duration, args.warmup, args.timeout
        )
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result), flush=True)
    return 0


# ---- wrk: the same closed loop from a C load generator -------------------------------------------------------
# On a 2-core machine the Python client above costs about as much CPU per request as the server it measures,
# so it caps every server near the same rate. wrk (Debian package `wrk`) sends the same single-text requests,
# closed loop, one connection per client, for a fraction of that CPU.

WRK_SCRIPT = """
bodies = {{
{bodies}
}}
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("POST", nil, {{["Content-Type"] = "application/json"}}, bodies[(counter % #bodies) + 1])
end
"""


def wrk_available() -> bool:
    import shutil

    return shutil.which("wrk") is not None


def _wrk_ms(value: str) -> float:
    for unit, factor in (("us", 0.001), ("ms", 1.0), ("s", 1000.0), ("m", 60000.0)):
        if value.endswith(unit):
            return float(value[: -len(unit)]) * factor
    return float(value) * 1000.0


def parse_wrk(output: str) -> dict:
    import re

    def number(pattern: str, default: float = 0.0) -> float:
        m = re.search(pattern, output)
        return float(m.group(1)) if m else default

    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", output, flags=re.M))
    if "50" not in latency or "99" not in latency or "Requests/sec" not in output:
        raise ValueError(f"unexpected wrk output:\n{output[-1500:]}")
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    errors = int(number(r"Non-2xx or 3xx responses: (\d+)")) + (
        sum(map(int, socket.groups())) if socket else 0
    )
    return {
        "throughput_rps": round(number(r"Requests/sec:\s+([\d.]+)"), 2),
        "p50_ms": round(_wrk_ms(latency["50"]), 2),
        "p99_ms": round(_wrk_ms(latency["99"]), 2),
        "errors": errors,
        "requests": int(number(r"(\d+) requests in")),
    }


def run_wrk(
    url: str, texts: list[str], concurrency: int, duration_s: float, warmup_s: float, workdir: Path
) -> dict:
    """Closed-loop load with wrk: warm-up run (discarded), then the measured run with latency percentiles."""
    import subprocess

    check_loopback(url)
    bodies = ",\n".join("  [==[" + infer_body(t).decode("utf-8") + "]==]" for t in texts)
    script = workdir / "wrk_post.lua"
    script.write_text(WRK_SCRIPT.format(bodies=bodies), "utf-8")
    base = ["wrk", "-t1", f"-c{concurrency}", "-s", str(script), "--timeout", "30s"]
    if warmup_s > 0:
        subprocess.run(
            [*base, f"-d{max(1, round(warmup_s))}s", url], capture_output=True, text=True, check=False
        )
    proc = subprocess.run(
        [*base, f"-d{max(1, round(duration_s))}s", "--latency", url],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")
    return {**parse_wrk(proc.stdout), "concurrency": concurrency, "duration_s": duration_s, "loadgen": "wrk"}


if __name__ == "__main__":
    sys.exit(main())
