"""Baseline for `make bench-worker`: the common "FastAPI + model" server, one request at a time, no batching.

    python -m bench.naive_server --repository model_repository --model intent --port 8100

Benchmark only, never deployed. It loads the same exported version with the same tokenizer
(`version.tokenizer()`) and the same `PaddleRunner` (`RunnerSettings.from_env()`, so `KEFU_RUNNER_CPU_THREADS`
etc. apply exactly as in the worker), and speaks the same Open Inference Protocol subset as the worker, so one
load generator drives both:

    POST /v2/models/{name}/infer   {"inputs": [{"name": "text", "shape": [N], "datatype": "BYTES", "data": [..]}]}
      -> {"model_name", "model_version", "outputs": [probs FP32 [N, L], label BYTES [N]]}  (classifiers)
      -> {"model_name", "model_version", "outputs": [embedding FP32 [N, D]]}              (encoders)
    GET  /v2/health/ready          -> 200 {"ready": true}

Endpoint style (the honest baseline). Default `--endpoint sync`: a plain `def` route, which FastAPI runs in
its thread pool, around ONE predictor guarded by a `threading.Lock`. This is what FastAPI's documentation
recommends for blocking code and what most "serve my model with FastAPI" deployments look like. The lock is
not a handicap but a requirement: a Paddle predictor is not thread-safe (its input handles are shared), so
the lock-free variant returns wrong answers or crashes under concurrency. It is also the kinder of the two
baselines: while one thread runs the model, others can parse JSON, tokenise and serialise.
`--endpoint async` is the other common pattern, an `async def` route calling the model inline on the event
loop (everything serialised, no thread hop); kept for comparison.

One uvicorn process (uvicorn's defaults: uvloop + httptools, as for the worker), access log off, no batching: each request's texts are tokenised and
run immediately as their own batch.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from pathlib import Path

import numpy as np
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from services.runtime.repository import ModelRepository, Task
from services.runtime.runner import PaddleRunner, RunnerSettings

log = logging.getLogger("bench.naive_server")


class InferInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[str]


class InferRequest(BaseModel):
    id: str | None = None
    inputs: list[InferInput]


class NaiveModel:
    """Tokenizer + one predictor; `predict` is serialised by a lock (the predictor is not thread-safe)."""

    def __init__(self, repository: Path, name: str, settings: RunnerSettings | None = None):
        self.version = ModelRepository(repository).open(name)
        self.name = name
        self.task = self.version.config.task
        self.labels = self.version.labels or self.version.config.labels
        self.max_batch_size = self.version.config.max_batch_size
        self.output = self.version.config.outputs[0].name  # probs | embedding
        self.tokenizer = self.version.tokenizer()
        self.runner = PaddleRunner(self.version, settings or RunnerSettings.from_env())
        self.lock = threading.Lock()
        self.predict(["你好"])  # one warm-up run before the server says it is ready

    def validate(self, request: InferRequest) -> list[str]:
        if len(request.inputs) != 1 or request.inputs[0].name != "text":
            raise HTTPException(400, "expected exactly one input named 'text'")
        tensor = request.inputs[0]
        if tensor.datatype != "BYTES" or tensor.shape != [len(tensor.data)] or not tensor.data:
            raise HTTPException(400, "input 'text' must be BYTES with shape [N] matching its N texts")
        if len(tensor.data) > self.max_batch_size:
            raise HTTPException(413, f"{len(tensor.data)} texts exceed max_batch_size {self.max_batch_size}")
        return tensor.data

    def predict(self, texts: list[str]) -> np.ndarray:
        ids = self.tokenizer(texts)
        with self.lock:
            return self.runner.run(ids)[self.output]

    def response(self, values: np.ndarray) -> dict:
        n = int(values.shape[0])
        outputs = [
            {
                "name": self.output,
                "shape": [n, int(values.shape[1])],
                "datatype": "FP32",
                "data": values.astype(np.float64).ravel().tolist(),
            }
        ]
        if self.task == Task.CLASSIFICATION:
            labels = [self.labels[int(i)] for i in values.argmax(axis=1)]
            outputs.append({"name": "label", "shape": [n], "datatype": "BYTES", "data": labels})
        return {"model_name": self.name, "model_version": str(self.version.version), "outputs": outputs}


def create_app(model: NaiveModel, endpoint: str = "sync") -> FastAPI:
    app = FastAPI(title="naive baseline server")

    def check_name(name: str) -> None:
        if name != model.name:
            raise HTTPException(404, f"no model named {name!r}")

    @app.get("/v2/health/ready")
    def ready():
        return {"ready": True}

    if endpoint == "sync":

        @app.post("/v2/models/{name}/infer")
        def infer(name: str, request: InferRequest):  # FastAPI runs a plain `def` in its thread pool
            check_name(name)
            return model.response(model.predict(model.validate(request)))

    elif endpoint == "async":

        @app.post("/v2/models/{name}/infer")
        async def infer(name: str, request: InferRequest):  # the model runs inline on the event loop
            check_name(name)
            return model.response(model.predict(model.validate(request)))

    else:
        raise ValueError(f"endpoint must be sync or async, got {endpoint!r}")
    return app


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.naive_server", description=__doc__.split("\n\n")[0])
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    p.add_argument("--model", default="intent")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8100)
    p.add_argument("--endpoint", choices=("sync", "async"), default="sync", help="see the module docstring")
    p.add_argument("--log-level", default="warning")
    args = p.parse_args(argv)
    os.environ.setdefault("MKL_DEBUG_CPU_TYPE", "5")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    import uvicorn

    settings = RunnerSettings.from_env()
    model = NaiveModel(args.repository, args.model, settings)
    print(
        f"naive server: {args.model} v{model.version.version}, endpoint {args.endpoint}, "
        f"{settings.cpu_threads} math thread(s), http://{args.host}:{args.port}/v2",
        flush=True,
    )
    uvicorn.run(
        create_app(model, args.endpoint),
        host=args.host,
        port=args.port,
        workers=1,
        log_level=args.log_level,
        access_log=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
