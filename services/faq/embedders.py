"""Embedders for the FAQ store: the exported `faq` encoder run in-process through Paddle Inference.

(The gateway will embed through the workers over the Open Inference Protocol; this one serves evaluation,
threshold calibration and offline re-indexing.)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from services.runtime.repository import ModelVersion, Task
from services.runtime.runner import PaddleRunner, RunnerSettings


class LocalEmbedder:
    def __init__(self, version: ModelVersion, settings: RunnerSettings | None = None, batch_size: int = 64):
        if version.config.task != Task.EMBEDDING:
            raise ValueError(
                f"{version.name} v{version.version} is a {version.config.task.value} model, not an encoder"
            )
        self._runner = PaddleRunner(version, settings or RunnerSettings(cpu_threads=2))
        self._tokenizer = version.tokenizer()
        self._output = version.config.outputs[0].name
        self._batch_size = batch_size
        self.version = f"{version.name}-v{version.version}"
        self.dim = int(version.config.outputs[0].dims[-1])

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        ids = self._tokenizer.encode_ids(list(texts))
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        for start in range(0, len(order), self._batch_size):
            chunk = order[start : start + self._batch_size]
            out[chunk] = self._runner.run(self._tokenizer.pad([ids[i] for i in chunk]))[self._output]
        return out
