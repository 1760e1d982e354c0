"""Inference backends behind one small interface.

A backend runs padded `input_ids` (int64, [batch, seq]) through one model version and returns its named
outputs. It knows nothing of HTTP, queues or tokenisation. `health()` touches the engine for real.

    paddle       Paddle Inference (CPU oneDNN by default; GPU / TensorRT FP16 via KEFU_RUNNER_* settings)
    onnxruntime  the same program converted with paddle2onnx (a measured peer, not the default)
    fake         deterministic outputs computed from the ids, with injectable delay and failures (tests)
"""

from __future__ import annotations

import hashlib
import time
from typing import Protocol

import numpy as np

from services.runtime.repository import ModelVersion, Task
from services.runtime.runner import RunnerSettings


class Backend(Protocol):
    name: str
    max_batch_size: int

    def infer(self, input_ids: np.ndarray) -> dict[str, np.ndarray]: ...

    def health(self) -> None:
        """Raise if the engine cannot run a tiny input."""

    def alive(self) -> bool:
        """Cheap, no inference: False once the engine is gone for good (an engine process that died)."""

    def close(self) -> None:
        """Release the engine (the version is unloaded or the worker stops)."""


class InProcessBackend:
    """An engine inside this process: alive as long as the process is, released with it."""

    def infer(self, input_ids: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def health(self) -> None:
        self.infer(np.array([[1, 2]], dtype=np.int64))

    def alive(self) -> bool:
        return True

    def close(self) -> None:
        return None


class PaddleBackend(InProcessBackend):
    name = "paddle"

    def __init__(self, version: ModelVersion, runner_settings: RunnerSettings | None = None):
        from services.runtime.runner import PaddleRunner

        self.max_batch_size = version.config.max_batch_size
        self._runner = PaddleRunner(version, runner_settings or RunnerSettings())

    def infer(self, input_ids: np.ndarray) -> dict[str, np.ndarray]:
        return self._runner.run(input_ids)


class FakeBackend(InProcessBackend):
    """Outputs are a pure function of each row's ids, so batching and ordering can be checked exactly.

    `delay_s` sleeps per batch (simulating compute, GIL released); `fail_when(input_ids)` returning True
    makes that batch raise.
    """

    name = "fake"

    def __init__(
        self,
        version: ModelVersion | None = None,
        *,
        task: Task = Task.CLASSIFICATION,
        width: int = 3,
        max_batch_size: int = 8,
        delay_s: float = 0.0,
        fail_when=None,
    ):
        if version is not None:
            task = version.config.task
            width = version.config.outputs[0].dims[-1]
            max_batch_size = version.config.max_batch_size
        self.task, self.width, self.max_batch_size = task, width, max_batch_size
        self.delay_s, self.fail_when = delay_s, fail_when
        self.batches: list[int] = []  # sizes of the batches run, for tests
        self.output_name = "probs" if task == Task.CLASSIFICATION else "embedding"

    @staticmethod
    def row(ids: np.ndarray, width: int) -> np.ndarray:
        real = ids[ids != 0]
        seed = int.from_bytes(hashlib.sha256(real.tobytes()).digest()[:4], "little")
        return np.random.default_rng(seed).random(width).astype(np.float32)

    def infer(self, input_ids: np.ndarray) -> dict[str, np.ndarray]:
        if self.fail_when is not None and self.fail_when(input_ids):
            raise RuntimeError("injected backend failure")
        if self.delay_s:
            time.sleep(self.delay_s)
        self.batches.append(len(input_ids))
        raw = np.stack([self.row(r, self.width) for r in input_ids])
        if self.task == Task.CLASSIFICATION:
            out = np.exp(raw * 4) / np.exp(raw * 4).sum(axis=1, keepdims=True)
        else:
            out = raw / np.linalg.norm(raw, axis=1, keepdims=True)
        return {self.output_name: out.astype(np.float32)}


def create_backend(kind: str, version: ModelVersion, runner: RunnerSettings | None = None) -> Backend:
    """The engine `kind` for `version`, configured by `runner` (the worker's `KEFU_RUNNER_*`, read once)."""
    runner = runner or RunnerSettings()
    if kind == "paddle":
        return PaddleBackend(version, runner)
    if kind == "onnxruntime":
        from services.worker.onnx_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(version, runner.cpu_threads)
    if kind == "fake":
        return FakeBackend(version)
    raise ValueError(f"unknown backend {kind!r}: paddle, onnxruntime or fake")
