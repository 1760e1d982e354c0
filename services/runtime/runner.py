"""Paddle Inference predictor for one model version.

CPU: oneDNN with a configurable math-thread count (the default backend).
GPU: CUDA, optionally TensorRT FP16 with dynamic batch/sequence shape ranges. The CPU build of Paddle raises
on `enable_tensorrt_engine`, and has no CUDA at all, so those paths are only entered when Paddle says it was
compiled with CUDA; otherwise a clear `RunnerError` is raised instead of a crash deep inside Paddle.

`predictor.run()` holds the GIL: scale with processes, one predictor each, not with threads.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Literal

import numpy as np

from services.runtime.repository import ModelVersion, RepositoryError

log = logging.getLogger(__name__)


class RunnerError(RepositoryError):
    """The predictor cannot be built with the requested settings."""


@dataclass(frozen=True)
class RunnerSettings:
    device: Literal["cpu", "gpu"] = "cpu"
    cpu_threads: int = 1
    onednn: bool = True
    onednn_cache_capacity: int = 16  # distinct input shapes oneDNN keeps kernels for; 0 = unlimited
    gpu_device_id: int = 0
    gpu_memory_pool_mb: int = 512
    tensorrt: bool = False
    tensorrt_precision: Literal["fp16", "fp32"] = "fp16"
    tensorrt_workspace_mb: int = 1024
    tensorrt_min_subgraph_size: int = 3
    tensorrt_opt_seq_len: int = 32

    @classmethod
    def from_env(cls, prefix: str = "KEFU_RUNNER_") -> RunnerSettings:
        """Read overrides such as KEFU_RUNNER_CPU_THREADS=2, KEFU_RUNNER_DEVICE=gpu, KEFU_RUNNER_TENSORRT=1."""
        kwargs = {}
        for field, default in cls().__dict__.items():
            raw = os.environ.get(prefix + field.upper())
            if raw is None:
                continue
            if isinstance(default, bool):
                kwargs[field] = raw.strip().lower() in ("1", "true", "yes", "on")
            elif isinstance(default, int):
                kwargs[field] = int(raw)
            else:
                kwargs[field] = raw
        return cls(**kwargs)


def _paddle_inference():
    import paddle.inference as paddle_infer  # imported lazily: heavy, and the fake backend needs none of it

    return paddle_infer


def gpu_available() -> bool:
    import paddle

    return paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0


def build_config(version: ModelVersion, settings: RunnerSettings, max_batch_size: int | None = None):
    paddle_infer = _paddle_inference()
    config = paddle_infer.Config(str(version.model_file), str(version.params_file))
    config.enable_new_ir(True)
    config.enable_new_executor(True)
    config.enable_memory_optim()  # only valid together with enable_new_ir(True)
    config.disable_glog_info()
    if settings.device == "gpu":
        if not gpu_available():
            raise RunnerError("device=gpu requested, but this Paddle build has no CUDA or no GPU is visible")
        config.enable_use_gpu(settings.gpu_memory_pool_mb, settings.gpu_device_id)
        if settings.tensorrt:
            _enable_tensorrt(config, version, settings, max_batch_size or version.config.max_batch_size)
    else:
        if settings.tensorrt:
            raise RunnerError("TensorRT needs device=gpu")
        config.disable_gpu()
        config.set_cpu_math_library_num_threads(settings.cpu_threads)
        if settings.onednn:
            config.enable_onednn()
            config.set_onednn_cache_capacity(settings.onednn_cache_capacity)
    return config


def _enable_tensorrt(config, version: ModelVersion, settings: RunnerSettings, max_batch_size: int) -> None:
    paddle_infer = _paddle_inference()
    precision = (
        paddle_infer.PrecisionType.Half
        if settings.tensorrt_precision == "fp16"
        else paddle_infer.PrecisionType.Float32
    )
    config.enable_tensorrt_engine(
        workspace_size=settings.tensorrt_workspace_mb << 20,
        max_batch_size=max_batch_size,
        min_subgraph_size=settings.tensorrt_min_subgraph_size,
        precision_mode=precision,
        use_static=False,
        use_calib_mode=False,
    )
    max_len = version.config.max_seq_len
    opt_len = min(settings.tensorrt_opt_seq_len, max_len)
    name = version.config.inputs[0].name
    config.set_trt_dynamic_shape_info(
        {name: [1, 1]}, {name: [max_batch_size, max_len]}, {name: [max(1, max_batch_size // 2), opt_len]}
    )


class PaddleRunner:
    """Runs padded `input_ids` through one version's predictor and returns its named outputs."""

    def __init__(self, version: ModelVersion, settings: RunnerSettings | None = None):
        self.version = version
        self.settings = settings or RunnerSettings()
        paddle_infer = _paddle_inference()
        self._predictor = paddle_infer.create_predictor(build_config(version, self.settings))
        self._input_names = self._predictor.get_input_names()
        self._output_names = [o.name for o in version.config.outputs]
        if len(self._input_names) != 1:
            raise RunnerError(f"{version.path}: expected one input (input_ids), found {self._input_names}")
        actual_outputs = self._predictor.get_output_names()
        if len(actual_outputs) != len(self._output_names):
            raise RunnerError(
                f"{version.path}: config.yaml lists outputs {self._output_names}, program has {actual_outputs}"
            )
        self._actual_outputs = actual_outputs
        log.info("loaded %s v%s on %s", version.name, version.version, self.settings.device)

    def run(self, input_ids: np.ndarray) -> dict[str, np.ndarray]:
        if input_ids.ndim != 2 or input_ids.dtype != np.int64:
            raise ValueError(
                f"input_ids must be an int64 [batch, seq] array, got {input_ids.dtype} {input_ids.shape}"
            )
        handle = self._predictor.get_input_handle(self._input_names[0])
        handle.reshape(list(input_ids.shape))
        handle.copy_from_cpu(np.ascontiguousarray(input_ids))
        self._predictor.run()
        return {
            name: self._predictor.get_output_handle(actual).copy_to_cpu()
            for name, actual in zip(self._output_names, self._actual_outputs, strict=True)
        }
