"""`make load`: the knee of the local stack under the real request mix, then a soak at 80 % of it.

    python -m bench.load                        # knee search + 10-minute soak, figures into docs/reliability.md
    python -m bench.load --soak 60 --no-doc     # a shorter soak, nothing written to the docs

1. Knee: steps of `--step` seconds at rising offered rates (x`--factor` from `--start`; the first 5 s of each
   step are warm-up), the request mix of bench/load_mix.py (chat 80 %, FAQ search 15 %, admin 5 %). The knee
   is the highest rate whose chat p99 is within `--p99-slo-ms` (250: docs/runbooks, 95 % of /v1/chat under
   250 ms; p99 is the stricter reading) and whose errors (5xx, no answer) stay within `--max-error-pct` (0.5:
   99.5 % of /v1 without 5xx). The search stops at the first step that misses either.
2. Soak: `--soak` seconds (600) at 80 % of the knee, memory (RSS of every process of the stack) and open file
   descriptors sampled every 10 s. Passes with 0 errors, memory flat within 10 % (mean of the last quarter of the
   samples against the first quarter, after a minute of warm-up) and no file-descriptor growth (median of the
   last quarter of the samples against the first quarter).
The stack is bench/load_stack.py (Redis, milvus-lite server, `--replicas` workers, gateway; cache off).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.load_records import find_knee, flat_within, growth, summarize
from bench.load_report import write_section
from bench.load_run import run_load, start_load, wait_load
from bench.load_stack import LoadStack, source_repository
from bench.reliability import stop_on_sigterm

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
WARMUP_S = 5.0


def knee_search(stack: LoadStack, work: Path, args) -> tuple[list[dict], dict | None]:
    steps, rate = [], args.start
    while rate <= args.max_rate:
        records, began = run_load(stack.url, stack.key, rate, args.step, work / f"step-{rate:g}.jsonl")
        summary = summarize(records, began + WARMUP_S, began + args.step)
        step = {"target_rps": round(rate, 2), "summary": summary, "loadavg_1m": round(os.getloadavg()[0], 2)}
        steps.append(step)
        chat = summary["kinds"].get("chat", {})
        print(
            f"   {rate:6.1f} req/s offered: {summary['rate_rps']:6.1f} sent, chat p50 {chat.get('p50_ms')} ms "
            f"p99 {chat.get('p99_ms')} ms, errors {summary['errors']} ({summary['error_pct']} %)",
            flush=True,
        )
        if find_knee(steps, args.p99_slo_ms, args.max_error_pct) is not steps[-1]:
            break
        rate *= args.factor
    return steps, find_knee(steps, args.p99_slo_ms, args.max_error_pct)


def soak(stack: LoadStack, rate: float, work: Path, args) -> dict:
    records_path = work / "soak.jsonl"
    began = time.time()
    proc = start_load(stack.url, stack.key, rate, args.soak, records_path)
    samples = []
    while proc.poll() is None:
        time.sleep(args.sample_every)
        if time.time() - began >= min(60.0, args.soak / 4) and time.time() - began <= args.soak:
            sample = {"t_s": round(time.time() - began, 1), "loadavg_1m": round(os.getloadavg()[0], 2)}
            samples.append({**sample, **stack.resources()})
    records = wait_load(proc, records_path, 120)
    summary = summarize(records, began + min(WARMUP_S, args.soak / 4), began + args.soak)
    flat, change = flat_within([s["rss_mb"] for s in samples], args.memory_pct)
    fd_growth = growth([s["fds"] for s in samples])
    verdict = {
        "zero_errors": summary["errors"] == 0,
        "memory_flat": flat,
        "no_fd_growth": fd_growth <= 0,
    }
    return {
        "rate_rps": round(rate, 2),
        "duration_s": args.soak,
        "summary": summary,
        "memory_change_pct": change,
        "fd_growth": fd_growth,
        "samples": samples,
        "verdict": verdict,
        "passed": all(verdict.values()),
    }


def markdown(result: dict) -> str:
    lines = [
        f"Command: `{result['command']}` — {result['at']}, {result['machine']}.",
        "",
        "| offered req/s | sent req/s | chat p50 ms | chat p99 ms | FAQ search p99 ms | admin p99 ms | errors "
        "| machine load (1 min) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for step in result["steps"]:
        s, k = step["summary"], step["summary"]["kinds"]
        admin = max((k.get(n, {}).get("p99_ms") or 0 for n in ("admin_read", "admin_create")), default=0)
        lines.append(
            f"| {step['target_rps']:g} | {s['rate_rps']} | {k.get('chat', {}).get('p50_ms')} | "
            f"{k.get('chat', {}).get('p99_ms')} | {k.get('faq_search', {}).get('p99_ms')} | {admin or '-'} | "
            f"{s['errors']} ({s['error_pct']} %) | {step.get('loadavg_1m', '-')} |"
        )
    knee = result["knee_rps"]
    lines += ["", f"**Knee: {knee} req/s** (highest offered rate with chat p99 ≤ {result['p99_slo_ms']:g} ms "
              f"and errors ≤ {result['max_error_pct']} %)." if knee else "**No knee**: the first step missed the SLO."]  # fmt: skip
    soak_ = result.get("soak")
    if soak_:
        s, chat = soak_["summary"], soak_["summary"]["kinds"].get("chat", {})
        first, last = soak_["samples"][0], soak_["samples"][-1]
        lines += [
            "",
            f"**Soak: {soak_['duration_s']:g} s at {soak_['rate_rps']} req/s (80 % of the knee): "
            f"{'passed' if soak_['passed'] else 'FAILED'}.**",
            "",
            "| requests | errors | degraded | chat p50 / p99 ms | memory (RSS, all processes) | open fds |",
            "|---|---|---|---|---|---|",
            f"| {s['requests']} | {s['errors']} | {s['degraded']} | {chat.get('p50_ms')} / {chat.get('p99_ms')} | "
            f"{first['rss_mb']} → {last['rss_mb']} MB ({soak_['memory_change_pct']:+g} %) | "
            f"{first['fds']} → {last['fds']} (growth {soak_['fd_growth']}) |",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--repository", type=Path, default=None, help="default: model_repository/, else models/shipped/"
    )
    p.add_argument("--replicas", type=int, default=1, help="worker replicas")
    p.add_argument("--start", type=float, default=2.0, help="first offered rate, req/s")
    p.add_argument("--factor", type=float, default=1.4, help="rate multiplier per step")
    p.add_argument("--max-rate", type=float, default=400.0)
    p.add_argument("--step", type=float, default=30.0, help="seconds per knee step")
    p.add_argument("--soak", type=float, default=600.0, help="soak seconds (0: none)")
    p.add_argument("--sample-every", type=float, default=10.0, help="resource sample interval, s")
    p.add_argument("--p99-slo-ms", type=float, default=250.0)
    p.add_argument("--max-error-pct", type=float, default=0.5)
    p.add_argument("--memory-pct", type=float, default=10.0)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--doc", type=Path, default=ROOT / "docs" / "reliability.md")
    p.add_argument("--no-doc", action="store_true", help="do not write the figures into --doc")
    args = p.parse_args(argv)
    stop_on_sigterm()
    work = Path(tempfile.mkdtemp(prefix="kefu-load-"))
    stack = LoadStack(work / "stack", source_repository(args.repository), replicas=args.replicas)
    started = time.time()
    try:
        print(f">> starting the stack ({args.replicas} worker replica(s); logs in {work}/stack)", flush=True)
        stack.start()
        print(
            f">> knee search: {args.step:g} s per step from {args.start:g} req/s, x{args.factor:g}",
            flush=True,
        )
        steps, knee = knee_search(stack, work, args)
        result = {
            "command": "make load"
            if "MAKELEVEL" in os.environ
            else "python -m bench.load " + " ".join(sys.argv[1:] if argv is None else argv),
            "at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
            "machine": f"{os.cpu_count()} CPUs shared with other jobs",
            "p99_slo_ms": args.p99_slo_ms,
            "max_error_pct": args.max_error_pct,
            "steps": steps,
            "knee_rps": knee["target_rps"] if knee else None,
        }
        if knee and args.soak > 0:
            rate = 0.8 * knee["target_rps"]
            print(f">> soak: {args.soak:g} s at {rate:.1f} req/s", flush=True)
            result["soak"] = soak(stack, rate, work, args)
            print(json.dumps({k: v for k, v in result["soak"].items() if k != "samples"}), flush=True)
    finally:
        stack.stop()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"load-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(started))}.json"
    path.write_text(json.dumps(result, ensure_ascii=False, indent=1) + "\n", "utf-8")
    text = markdown(result)
    print(text, flush=True)
    if not args.no_doc:
        write_section(args.doc, "load", text)
        print(f">> written {path} and the load section of {args.doc}", flush=True)
    ok = result["knee_rps"] is not None and (args.soak <= 0 or result.get("soak", {}).get("passed", False))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
