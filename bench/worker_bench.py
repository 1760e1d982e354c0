"""`make bench-worker`: the batching worker against the one-request-at-a-time baseline, same model, same inputs.

    python -m bench.worker_bench --repository model_repository [--model intent] [--duration 10]
        [--servers naive,batching,onnxruntime] [--concurrency 1,8,32,64] [--threads 1]

Servers, each started alone as a subprocess on a free 127.0.0.1 port, waited for on `/v2/health/ready`, then
stopped (SIGTERM, then SIGKILL):
  naive        `python -m bench.naive_server`: FastAPI, a plain `def` route, one predictor behind a lock
  batching     `python -m services.worker`: the real worker, dynamic batching, Paddle Inference backend
  onnxruntime  the same worker with `--backend onnxruntime` (only when onnxruntime is importable)

Load: closed loop, single-text V2 infer requests, at each concurrency for `--warmup` (not counted) +
`--duration` seconds, from a separate process: `wrk` (Debian package, C) when installed (`--loadgen auto`),
else `python -m bench.loadgen` (httpx). On 2 cores the Python client costs about as much CPU per request as
the servers it measures and caps them all near the same rate; wrk leaves the cores to the servers.

Inputs: a fixed-seed draw of real messages, ~70 % short customer messages (`data/intent_cs_demo/train.jsonl`)
and ~30 % reviews (`data/sentiment/dev.jsonl`); the tokenizer truncates to the model's max_seq_len.

Sizing, so the comparison is like for like: every server is ONE uvicorn process with ONE predictor using
`KEFU_RUNNER_CPU_THREADS` (`--threads`, default 1) math threads, with `MKL_DEBUG_CPU_TYPE=5`. Servers run one
after the other, never together, so each gets the same whole machine (2 cores here), which it shares with the
load generator; nothing is pinned. Other load on the machine (a training job) skews the figures: the load
average is recorded before and after, and a warning printed.

Prints a table (server, concurrency, throughput, p50, p99, errors) and the throughput ratios batching/naive
and batching/onnxruntime per concurrency; writes the same to `bench/results/worker-<timestamp>.json`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path

import httpx
import numpy as np

from bench.loadgen import run_wrk, wrk_available

ROOT = Path(__file__).resolve().parent.parent
SHORT_SOURCE = ROOT / "data" / "intent_cs_demo" / "train.jsonl"
REVIEW_SOURCE = ROOT / "data" / "sentiment" / "dev.jsonl"
SERVERS = ("naive", "batching", "onnxruntime")
ROW_KEYS = ("server", "concurrency", "throughput_rps", "p50_ms", "p99_ms", "errors")
RATIO_KEYS = ("batching_over_naive", "batching_over_onnxruntime")


class BenchError(RuntimeError):
    """A server did not come up, or the load generator failed."""


def read_texts(path: Path) -> list[str]:
    rows = [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]
    return [r["text"] for r in rows if isinstance(r.get("text"), str) and r["text"].strip()]


def sample_texts(n: int, short_fraction: float, seed: int) -> list[str]:
    """`n` texts: round(n * short_fraction) short customer messages, the rest reviews; fixed seed, shuffled."""
    rng = np.random.default_rng(seed)
    short, reviews = read_texts(SHORT_SOURCE), read_texts(REVIEW_SOURCE)
    n_short = round(n * short_fraction)
    picked = [short[i] for i in rng.choice(len(short), size=n_short, replace=n_short > len(short))]
    n_reviews = n - n_short
    picked += [reviews[i] for i in rng.choice(len(reviews), size=n_reviews, replace=n_reviews > len(reviews))]
    return [picked[i] for i in rng.permutation(len(picked))]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("MKL_DEBUG_CPU_TYPE", "5")
    env["KEFU_RUNNER_CPU_THREADS"] = str(threads)
    env.setdefault("GLOG_minloglevel", "2")
    env.setdefault("PYTHONWARNINGS", "ignore")
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def server_command(server: str, args, port: int) -> list[str]:
    repo = str(args.repository)
    if server == "naive":
        cmd = [sys.executable, "-m", "bench.naive_server", "--repository", repo, "--model", args.model]
        return cmd + ["--host", "127.0.0.1", "--port", str(port), "--endpoint", args.naive_endpoint]
    cmd = [sys.executable, "-m", "services.worker", "--repository", repo, "--models", args.model]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    if server == "onnxruntime":
        cmd += ["--backend", "onnxruntime"]
    return cmd + list(args.worker_arg)


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text("utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join("    | " + line for line in text.strip().splitlines()[-lines:])


class Server:
    """A server subprocess in its own process group (uvicorn may fork workers), with its log in a file."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], port: int, log_file: Path):
        self.name, self.cmd, self.port, self.log_file = name, cmd, port, log_file
        self._log = open(log_file, "wb")  # closed in stop()
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout_s: float) -> float:
        start = time.monotonic()
        next_note = start + 5
        print(f"  starting {self.name} on 127.0.0.1:{self.port} ", end="", flush=True)
        with httpx.Client(timeout=2.0) as client:
            while True:
                elapsed = time.monotonic() - start
                if self.proc.poll() is not None:
                    print()
                    raise BenchError(
                        f"{self.name} exited with code {self.proc.returncode} before it was ready "
                        f"(log {self.log_file}):\n{log_tail(self.log_file)}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(self.base + "/v2/health/ready").status_code == 200:
                        print(f"ready after {elapsed:.1f} s", flush=True)
                        return elapsed
                if elapsed > timeout_s:
                    print()
                    raise BenchError(
                        f"{self.name} was not ready on {self.base}/v2/health/ready after {timeout_s:.0f} s "
                        f"(raise --ready-timeout?); log {self.log_file}:\n{log_tail(self.log_file)}"
                    )
                if time.monotonic() >= next_note:  # progress: elapsed seconds every 5 s
                    print(f"{elapsed:.0f}s ", end="", flush=True)
                    next_note += 5
                time.sleep(0.5)

    def stop(self, grace_s: float = 15.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        else:  # the leader is gone; make sure none of its children outlived it
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self._log.close()


def run_loadgen(url: str, texts_file: Path, concurrency: int, args, env: dict[str, str]) -> dict:
    cmd = [sys.executable, "-m", "bench.loadgen", "--url", url, "--texts", str(texts_file)]
    cmd += ["--concurrency", str(concurrency), "--duration", str(args.duration), "--warmup", str(args.warmup)]
    cmd += ["--timeout", str(args.request_timeout)]
    limit = args.warmup + args.duration + args.request_timeout + 60
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"the load generator ran past {limit:.0f} s at concurrency {concurrency}") from e
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise BenchError(
            f"the load generator failed (exit {proc.returncode}):\n{proc.stderr.strip()[-2000:]}"
        )
    return json.loads(lines[-1])


def versions_of(*packages: str) -> dict[str, str | None]:
    out = {}
    for name in packages:
        try:
            out[name] = package_version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def ratios(rows: list[dict], concurrencies: list[int]) -> list[dict]:
    by = {(r["server"], r["concurrency"]): r["throughput_rps"] for r in rows}
    out = []
    for c in concurrencies:
        batching = by.get(("batching", c))

        def over(other: str, batching=batching, c=c) -> float | None:
            base = by.get((other, c))
            return round(batching / base, 2) if batching is not None and base else None

        out.append(
            {
                "concurrency": c,
                "batching_over_naive": over("naive"),
                "batching_over_onnxruntime": over("onnxruntime"),
            }
        )
    return out


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(rows: list[dict], ratio_rows: list[dict]) -> None:
    print()
    print(f"{'server':<12} {'conc':>5} {'req/s':>9} {'p50 ms':>9} {'p99 ms':>9} {'errors':>7}")
    for r in rows:
        print(
            f"{r['server']:<12} {r['concurrency']:>5} {fmt(r['throughput_rps'], '.1f'):>9} "
            f"{fmt(r['p50_ms'], '.2f'):>9} {fmt(r['p99_ms'], '.2f'):>9} {r['errors']:>7}"
        )
    print()
    print(f"{'conc':>5} {'batching/naive':>15} {'batching/onnxruntime':>21}   (throughput ratios)")
    for r in ratio_rows:
        naive, onnx = (fmt(r[k], ".2f") + "x" if r[k] is not None else "-" for k in RATIO_KEYS)
        print(f"{r['concurrency']:>5} {naive:>15} {onnx:>21}")


def parse_list(raw: str, kind=str) -> list:
    return [kind(x.strip()) for x in raw.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.worker_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    p.add_argument("--model", default="intent")
    p.add_argument("--servers", default=",".join(SERVERS), help="comma-separated: naive,batching,onnxruntime")
    p.add_argument("--concurrency", default="1,8,32,64", help="comma-separated closed-loop client counts")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per concurrency")
    p.add_argument("--warmup", type=float, default=2.0, help="uncounted seconds before each measurement")
    p.add_argument(
        "--threads",
        type=int,
        default=int(os.environ.get("KEFU_RUNNER_CPU_THREADS", "1")),
        help="KEFU_RUNNER_CPU_THREADS for every server (default: the environment's, else 1)",
    )
    p.add_argument("--texts", type=int, default=2000, help="distinct request texts drawn")
    p.add_argument("--short-fraction", type=float, default=0.7, help="share of short customer messages")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--naive-endpoint", choices=("sync", "async"), default="sync", help="see bench/naive_server"
    )
    p.add_argument(
        "--worker-arg",
        action="append",
        default=[],
        help="extra argument for `python -m services.worker` (repeat; e.g. --worker-arg=--max-queue-delay-ms=2)",
    )
    p.add_argument("--ready-timeout", type=float, default=300.0, help="seconds to wait for /v2/health/ready")
    p.add_argument("--request-timeout", type=float, default=30.0, help="per request, seconds")
    p.add_argument("--label", default="", help="tag for the result file name and config (e.g. paddle-gpu)")
    p.add_argument(
        "--device-info", type=Path, help="JSON from bench.gpu.gpu_info, kept in the result's config"
    )
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    p.add_argument(
        "--loadgen",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="auto: wrk if installed, else python",
    )
    args = p.parse_args(argv)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # no per-request lines amid the readiness progress

    use_wrk = args.loadgen == "wrk" or (args.loadgen == "auto" and wrk_available())
    if args.loadgen == "wrk" and not wrk_available():
        p.error("--loadgen wrk: wrk is not installed (apt-get install wrk)")
    print(f"load generator: {'wrk' if use_wrk else 'python -m bench.loadgen (httpx)'}", flush=True)
    servers = parse_list(args.servers)
    if unknown := [s for s in servers if s not in SERVERS]:
        p.error(f"unknown server(s) {unknown}; choose from {','.join(SERVERS)}")
    concurrencies = parse_list(args.concurrency, int)
    if not concurrencies or min(concurrencies) < 1:
        p.error("--concurrency needs positive integers")
    if not 0 <= args.short_fraction <= 1 or args.threads < 1 or args.duration <= 0 or args.warmup < 0:
        p.error("check --short-fraction (0..1), --threads (>= 1), --duration (> 0), --warmup (>= 0)")
    args.repository = args.repository.resolve()

    from services.runtime.repository import ModelRepository, RepositoryError

    try:
        version = ModelRepository(args.repository).open(args.model)
    except RepositoryError as e:
        print(f"error: {e} (build the models first: make models)", file=sys.stderr)
        return 2

    skipped = {}
    if "onnxruntime" in servers and importlib.util.find_spec("onnxruntime") is None:
        skipped["onnxruntime"] = "onnxruntime is not importable in this environment"
        servers.remove("onnxruntime")
        print("note: skipping the onnxruntime worker: onnxruntime is not installed", flush=True)

    texts = sample_texts(args.texts, args.short_fraction, args.seed)
    lengths = np.array([len(ids) for ids in version.tokenizer().encode_ids(texts)])
    load_before = os.getloadavg()
    env = server_env(args.threads)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    print(
        f"{args.model} v{version.version} from {args.repository}: {len(texts)} texts "
        f"({args.short_fraction:.0%} short messages), tokens p50 {np.percentile(lengths, 50):.0f} / "
        f"p90 {np.percentile(lengths, 90):.0f} / max {lengths.max()} (max_seq_len {version.config.max_seq_len})"
    )
    print(
        f"servers {','.join(servers)}; concurrency {args.concurrency}; {args.warmup:g} s warm-up + "
        f"{args.duration:g} s each; KEFU_RUNNER_CPU_THREADS={args.threads}; {os.cpu_count()} CPU(s)",
        flush=True,
    )
    if load_before[0] > 0.5:
        print(
            f"warning: load average {load_before[0]:.2f} before starting: something else is using the CPU, "
            "the figures will be noisy",
            flush=True,
        )

    rows: list[dict] = []
    failures: dict[str, str] = {}
    commands: dict[str, list[str]] = {}
    startup_s: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="kefu-worker-bench-") as tmp:
        texts_file = Path(tmp) / "texts.jsonl"
        texts_file.write_text(
            "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), "utf-8"
        )
        for name in servers:
            port = free_port()
            cmd = server_command(name, args, port)
            commands[name] = cmd[1:]
            print(f"\n[{name}] {' '.join(cmd[1:])}", flush=True)
            server = Server(name, cmd, env, port, Path(tmp) / f"{name}.log")
            try:
                startup_s[name] = round(server.wait_ready(args.ready_timeout), 1)
                url = f"{server.base}/v2/models/{args.model}/infer"
                for c in concurrencies:
                    if use_wrk:
                        result = run_wrk(url, texts, c, args.duration, args.warmup, Path(tmp))
                    else:
                        result = run_loadgen(url, texts_file, c, args, env)
                    row = {"server": name, "concurrency": c} | {k: result[k] for k in ROW_KEYS[2:]}
                    rows.append(row)
                    print(
                        f"  concurrency {c:>3}: {fmt(row['throughput_rps'], '.1f')} req/s, "
                        f"p50 {fmt(row['p50_ms'], '.2f')} ms, p99 {fmt(row['p99_ms'], '.2f')} ms, "
                        f"{row['errors']} error(s) of {result['requests']}",
                        flush=True,
                    )
                    if server.proc.poll() is not None:
                        raise BenchError(f"{name} died during the run:\n{log_tail(server.log_file)}")
            except BenchError as e:
                failures[name] = str(e)
                print(f"error: {e}", file=sys.stderr, flush=True)
            finally:
                server.stop()

    ratio_rows = ratios(rows, concurrencies)
    print_table(rows, ratio_rows)
    load_after = os.getloadavg()
    config = {
        "loadgen": "wrk" if use_wrk else "python",
        "model": args.model,
        "version": version.version,
        "repository": str(args.repository),
        "max_seq_len": version.config.max_seq_len,
        "max_batch_size": version.config.max_batch_size,
        "servers": servers,
        "skipped": skipped,
        "failures": failures,
        "concurrency": concurrencies,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "request_timeout_s": args.request_timeout,
        "texts": {
            "count": len(texts),
            "short_fraction": args.short_fraction,
            "seed": args.seed,
            "sources": [str(SHORT_SOURCE.relative_to(ROOT)), str(REVIEW_SOURCE.relative_to(ROOT))],
            "tokens_p50": float(np.percentile(lengths, 50)),
            "tokens_p90": float(np.percentile(lengths, 90)),
            "tokens_mean": round(float(lengths.mean()), 2),
        },
        "env": {k: env[k] for k in sorted(env) if k.startswith("KEFU_") or k == "MKL_DEBUG_CPU_TYPE"},
        "naive_endpoint": args.naive_endpoint,
        "worker_args": list(args.worker_arg),
        "commands": commands,
        "startup_s": startup_s,
        "label": args.label,
        "timestamp": stamp,
        "machine": {
            "cpus": os.cpu_count(),
            "cpu_model": cpu_model(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in load_after],
        },
        "device": json.loads(args.device_info.read_text("utf-8")) if args.device_info else {"kind": "cpu"},
        "packages": versions_of(
            "paddlepaddle", "paddlepaddle-gpu", "onnxruntime", "fastapi", "uvicorn", "httpx"
        ),
    }
    args.results.mkdir(parents=True, exist_ok=True)
    suffix = f"{args.label}-" if args.label else ""
    out = args.results / f"worker-{suffix}{stamp}.json"
    out.write_text(
        json.dumps({"rows": rows, "ratios": ratio_rows, "config": config}, indent=2) + "\n", "utf-8"
    )
    print(f"\nwritten: {out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
