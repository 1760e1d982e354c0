"""Side-by-side engine benchmark of an exported model: Paddle Inference with oneDNN, without, and onnxruntime.

    python -m bench.runner_bench --repository model_repository [--model intent] [--no-onnxruntime]

Inputs are real messages of the model's own dev data (its realistic length mix), in batches of 1, 8 and 32,
the same arrays for every engine, one math thread each (the worker's default). Prints p50/p99 per batch,
texts/s, the oneDNN speed-up and onnxruntime's throughput over Paddle with oneDNN (the engine-level part of
`make bench-worker`'s Paddle-vs-onnxruntime ratio); writes bench/results/runner-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from models.corpus import load_classification
from services.faq.records import load_pairs
from services.runtime.repository import ModelRepository, Task
from services.runtime.runner import PaddleRunner, RunnerSettings


def sample_texts(version, n: int, seed: int = 0) -> list[str]:
    training = json.loads((version.path / "training.json").read_text("utf-8"))
    dev = Path(training["dev"]["path"])
    if version.config.task == Task.CLASSIFICATION:
        texts = [e.text for e in load_classification(dev)]
    else:
        texts = [t for p in load_pairs(dev) for t in (p.text_a, p.text_b)]
    return list(np.random.default_rng(seed).choice(texts, size=n, replace=len(texts) < n))


class OnnxEngine:
    """The worker's onnxruntime backend behind the runner's `run(ids)`."""

    def __init__(self, version, threads: int):
        from services.worker.onnx_backend import OnnxRuntimeBackend

        self.backend = OnnxRuntimeBackend(version, cpu_threads=threads)

    def run(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        return self.backend.infer(ids)


def measure(runner, batches: list[np.ndarray], seconds: float) -> list[float]:
    for ids in batches[:5]:  # warm-up (oneDNN builds kernels per shape)
        runner.run(ids)
    latencies, deadline, i = [], time.perf_counter() + seconds, 0
    while time.perf_counter() < deadline or len(latencies) < 20:
        start = time.perf_counter()
        runner.run(batches[i % len(batches)])
        latencies.append((time.perf_counter() - start) * 1000)
        i += 1
    return latencies


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.runner_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    p.add_argument("--model", default="intent")
    p.add_argument("--seconds", type=float, default=5.0, help="per configuration")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--results", type=Path, default=Path("bench/results"))
    p.add_argument("--no-onnxruntime", action="store_true", help="Paddle only (no paddle2onnx conversion)")
    args = p.parse_args(argv)
    version = ModelRepository(args.repository).open(args.model)
    tokenizer = version.tokenizer()
    rows = []
    print(
        f"{args.model} v{version.version}: {args.threads} math thread(s), {args.seconds:.0f} s per configuration"
    )
    print(f"{'batch':>5} {'engine':>12} {'p50 ms':>8} {'p99 ms':>8} {'texts/s':>9}")
    for batch_size in (1, 8, 32):
        texts = sample_texts(version, batch_size * 50)
        batches = [tokenizer(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
        result = {}
        engines = [("plain-cpu", False), ("onednn", True)] + (
            [] if args.no_onnxruntime else [("onnxruntime", None)]
        )
        for engine, onednn in engines:
            if onednn is None:
                runner = OnnxEngine(version, args.threads)
            else:
                runner = PaddleRunner(version, RunnerSettings(cpu_threads=args.threads, onednn=onednn))
            lat = np.array(measure(runner, batches, args.seconds))
            row = {
                "engine": engine,
                "batch_size": batch_size,
                "p50_ms": round(float(np.percentile(lat, 50)), 3),
                "p99_ms": round(float(np.percentile(lat, 99)), 3),
                "texts_per_s": round(batch_size * 1000 / float(lat.mean()), 1),
            }
            rows.append(row)
            result[engine] = row
            print(
                f"{batch_size:>5} {engine:>12} {row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f} {row['texts_per_s']:>9.1f}"
            )
        ratio = result["onednn"]["texts_per_s"] / result["plain-cpu"]["texts_per_s"]
        print(f"{batch_size:>5} {'onednn/plain':>12} throughput ratio {ratio:.2f}x")
        if "onnxruntime" in result:
            ort = result["onnxruntime"]["texts_per_s"] / result["onednn"]["texts_per_s"]
            print(f"{batch_size:>5} {'ort/onednn':>12} throughput ratio {ort:.2f}x")
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"runner-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(
        json.dumps({"model": args.model, "version": version.version, "rows": rows}, indent=2) + "\n"
    )
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
