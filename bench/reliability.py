"""`make reliability`: each fault injected under load, with per-experiment figures, into docs/reliability.md.

    python -m bench.reliability                                   # every experiment (root: network namespaces)
    python -m bench.reliability --only worker_hung --short --no-doc --no-netns

The stack is bench/load_stack.py with two worker replicas (Redis, milvus-lite server, gateway; cache off), laid
out in network namespaces (bench/reliability_netns.py: the gateway, Redis, the store and the load generator in
one, each worker in its own, joined by veth pairs; this module runs itself again inside the gateway's);
`--no-netns` puts everything on loopback instead (no root needed, no `netns_cut`). For each experiment
(bench/reliability_experiments.py) the request mix of bench/load_mix.py runs at `--rate` req/s: the fault comes
after 10 s (`--short`: 3 s), is held 10 s (3 s) where it has a duration, and the load goes on until 45 s (12 s)
past the fault. Figures per experiment, over the requests started from the fault on:
  client errors   5xx answers and requests without an answer (4xx would be the client's own fault)
  degraded        chat answers that name a degraded upstream (`degraded` not empty)
  recovery s      from the fault until every later request is good (2xx, not degraded) for 3 s or more;
                  "—" when answers were never bad, "not recovered" when the run ended first
  writes lost     FAQs the admin API acknowledged (201) during the run that the store does not have afterwards
The experiments run one after the other on the same stack, 2 s apart; the figures land in the reliability
section of docs/reliability.md and in bench/results/reliability-<UTC time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.load_records import Record, lost_writes, recovery_s, summarize
from bench.load_report import write_section
from bench.load_run import start_load, wait_load
from bench.load_stack import LoadStack, source_repository
from bench.reliability_experiments import EXPERIMENTS
from bench.reliability_netns import Namespaces, check_tools, stack_in_namespaces

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SHORT = {"before": 3.0, "hold": 3.0, "after": 12.0}
# the gateway finds a restarted store at its next refresh / probe (about 10 s): a short run watches it longer
SHORT_AFTER = {"store_restarted": 25.0}
FULL = {"before": 10.0, "hold": 10.0, "after": 45.0}


def figures(records: list[Record], fault_at: float, end: float, present: set[str]) -> dict:
    during = summarize(records, fault_at, end)
    before = summarize(
        [r for r in records if r.end < fault_at]
    )  # answered before the fault: not caught by it
    recovery = recovery_s(records, fault_at)
    return {
        "requests": during["requests"],
        "client_errors": during["errors"],
        "client_error_pct": during["error_pct"],
        "degraded": during["degraded"],
        "recovery_s": recovery,
        "recovered": recovery is not None,
        "writes_acknowledged": sum(1 for r in records if r.faq_id and r.status == 201),
        "writes_lost": len(lost_writes(records, present)),
        "statuses": during["statuses"],
        "chat_p99_ms_before": before["kinds"].get("chat", {}).get("p99_ms"),
        "chat_p99_ms_after_fault": during["kinds"].get("chat", {}).get("p99_ms"),
    }


def run_experiment(stack: LoadStack, name: str, rate: float, timing: dict, work: Path) -> dict:
    """The load for before + after seconds, the fault at `before` (in a thread: the load goes on meanwhile);
    the figures of the run."""
    if timing == SHORT and name in SHORT_AFTER:
        timing = {**timing, "after": SHORT_AFTER[name]}
    experiment = EXPERIMENTS[name][1]
    records_path = work / f"{name}.jsonl"
    duration = timing["before"] + timing["after"]
    began = time.time()
    proc = start_load(stack.url, stack.key, rate, duration, records_path)
    time.sleep(timing["before"])
    fault_at = time.time()
    notes: dict = {}
    error: list[BaseException] = []

    def inject() -> None:
        try:
            notes.update(experiment(stack, timing["hold"]))
        except BaseException as e:  # noqa: BLE001 - reported with the figures
            error.append(e)

    injector = threading.Thread(target=inject, name=f"fault-{name}", daemon=True)
    injector.start()
    records = wait_load(proc, records_path, duration + 120)
    injector.join(300)
    if error:
        raise RuntimeError(f"{name}: the fault could not be injected: {error[0]}") from error[0]
    written = sorted({r.faq_id for r in records if r.faq_id and r.status == 201})
    present = stack.present_faqs(written)
    result = figures(records, fault_at, began + duration, present)
    return {
        "experiment": name,
        "fault_at": fault_at,
        "fault_at_s": round(fault_at - began, 1),
        "notes": notes,
        **result,
        "loadavg_1m": round(os.getloadavg()[0], 2),  # the machine is shared: how busy it was
    }


def markdown(result: dict) -> str:
    lines = [
        f"Command: `{result['command']}` — {result['at']}, {result['machine']}; load {result['rate_rps']:g} req/s "
        f"(the mix of `make load`), {result['layout']}, fault at {result['timing']['before']:g} s, held {result['timing']['hold']:g} s "
        f"where it lasts, figures over the {result['timing']['after']:g} s from the fault on.",
        "",
        "| experiment | requests | client errors | degraded answers | time to recovery | writes lost "
        "| chat p99 ms before / from the fault | machine load (1 min) | notes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["experiments"]:
        recovery = (
            "—"
            if row["recovery_s"] == 0
            else f"{row['recovery_s']} s"
            if row["recovered"]
            else "not recovered"
        )
        notes = ", ".join(f"{k} {v}" for k, v in row["notes"].items() if k != "statuses")
        lines.append(
            f"| {row['title']} | {row['requests']} | {row['client_errors']} ({row['client_error_pct']} %) | "
            f"{row['degraded']} | {recovery} | {row['writes_lost']} of {row['writes_acknowledged']} | "
            f"{row['chat_p99_ms_before']} / {row['chat_p99_ms_after_fault']} | {row.get('loadavg_1m', '-')} | "
            f"{notes} |"
        )
    return "\n".join(lines)


def stop_on_sigterm() -> None:
    """SIGTERM (a timeout, a CI cancel) unwinds like Ctrl-C, so the stack is stopped and the namespaces go."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def run_all(stack: LoadStack, names: list[str], rate: float, timing: dict, work: Path) -> list[dict]:
    rows = []
    try:
        print(
            f">> starting the stack ({len(stack.worker_urls)} worker replicas; logs in {stack.workdir})",
            flush=True,
        )
        stack.start()
        for name in names:
            title = EXPERIMENTS[name][0]
            print(f">> {name}: {title}", flush=True)
            row = {"title": title, **run_experiment(stack, name, rate, timing, work)}
            rows.append(row)
            print("   " + json.dumps({k: v for k, v in row.items() if k != "title"}), flush=True)
            time.sleep(2)  # the next experiment starts from a settled stack
    finally:
        stack.stop()
    return rows


def in_namespaces(argv: list[str], work: Path) -> list[dict]:
    """Namespaces up, this module again inside the gateway's (`--inside`), namespaces down; its rows."""
    check_tools()
    ns = Namespaces(f"{os.getpid() % 100000}")
    result = work / "rows.json"
    try:
        ns.create()
        inner = [*argv, "--inside", ns.names, "--work", str(work), "--result", str(result)]
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns.gateway, sys.executable, "-m", "bench.reliability", *inner],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        try:
            proc.wait()
        finally:  # interrupted: the inner run stops its stack before the namespaces go
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(90)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if proc.returncode != 0 or not result.exists():
            raise RuntimeError(
                f"the experiments failed in the network namespaces ({proc.returncode}); logs in {work}"
            )
    finally:
        ns.delete()
    return json.loads(result.read_text("utf-8"))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m bench.reliability", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--repository", type=Path, default=None, help="default: model_repository/, else models/shipped/"
    )
    p.add_argument("--rate", type=float, default=6.0, help="offered load, req/s")
    p.add_argument(
        "--only", default="", help=f"comma-separated experiments (default: all): {', '.join(EXPERIMENTS)}"
    )
    p.add_argument(
        "--short", action="store_true", help="CI timing: 3 s before, 3 s held, 12 s after (store: 25 s)"
    )
    p.add_argument(
        "--no-netns", action="store_true", help="everything on loopback, no netns_cut (no root needed)"
    )
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--doc", type=Path, default=ROOT / "docs" / "reliability.md")
    p.add_argument("--no-doc", action="store_true", help="do not write the figures into --doc")
    p.add_argument(
        "--inside", default="", help=argparse.SUPPRESS
    )  # namespaces, when run inside the gateway's
    p.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    stop_on_sigterm()
    timing = SHORT if args.short else FULL
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(EXPERIMENTS)
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        print(
            f"error: unknown experiment(s) {', '.join(unknown)}; known: {', '.join(EXPERIMENTS)}",
            file=sys.stderr,
        )
        return 2
    if args.no_netns and "netns_cut" in names:
        names.remove("netns_cut")
    if args.inside:  # the second half of in_namespaces()
        stack = stack_in_namespaces(args.work / "stack", source_repository(args.repository), args.inside)
        rows = run_all(stack, names, args.rate, timing, args.work)
        args.result.write_text(json.dumps(rows, ensure_ascii=False), "utf-8")
        return 0
    work = Path(tempfile.mkdtemp(prefix="kefu-reliability-"))
    started = time.time()
    try:
        if args.no_netns:
            stack = LoadStack(work / "stack", source_repository(args.repository), replicas=2)
            rows = run_all(stack, names, args.rate, timing, work)
        else:
            rows = in_namespaces(argv, work)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    result = {
        "command": "make reliability"
        if "MAKELEVEL" in os.environ
        else "python -m bench.reliability " + " ".join(argv or []),
        "at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "machine": f"{os.cpu_count()} CPUs shared with other jobs",
        "layout": "loopback"
        if args.no_netns
        else "gateway and each worker in a network namespace (veth pairs)",
        "rate_rps": args.rate,
        "timing": timing,
        "experiments": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"reliability-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(started))}.json"
    path.write_text(json.dumps(result, ensure_ascii=False, indent=1) + "\n", "utf-8")
    text = markdown(result)
    print(text, flush=True)
    if not args.no_doc:
        write_section(args.doc, "reliability", text)
        print(f">> written {path} and the reliability section of {args.doc}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
