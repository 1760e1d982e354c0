"""Which Paddle and which GPU produce the GPU figures, and does the exported model answer right on them.

    python -m bench.gpu.gpu_info [--repository model_repository --model intent] [--tensorrt] [--json FILE]

Prints `paddle.__version__`, its commit, CUDA / cuDNN / TensorRT versions and
`paddle.device.cuda.get_device_name()`. With `--repository`, loads the model on CPU and on GPU (and with
TensorRT FP16 when `--tensorrt`), runs the same real texts through each, and prints the largest difference
from the CPU outputs (FP32 GPU ~1e-5, TensorRT FP16 ~1e-3 are normal). Exits non-zero when Paddle is older
than 3.0 (it cannot load the PIR `.json` programs this repository exports), has no CUDA, or sees no GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

TEXTS = [
    "在吗",
    "我的快递到哪了？订单号2023112345678",
    "退款什么时候到账",
    "我要投诉你们的快递员态度太差了，东西也摔坏了，必须给我一个说法",
    "外卖送得很快，味道也不错，就是米饭有点少，下次还会再点的。" * 3,
]


def describe() -> dict:
    import paddle
    import paddle.inference as paddle_infer

    info = {
        "paddle_version": paddle.__version__,
        "paddle_commit": paddle.version.commit,
        "compiled_with_cuda": bool(paddle.device.is_compiled_with_cuda()),
        "cuda": paddle.version.cuda(),
        "cudnn": paddle.version.cudnn(),
        "tensorrt_compile": ".".join(map(str, paddle_infer.get_trt_compile_version())),
        "tensorrt_runtime": None,
        "device_count": 0,
        "device_name": None,
    }
    if hasattr(paddle_infer, "get_trt_runtime_version"):
        try:
            info["tensorrt_runtime"] = ".".join(map(str, paddle_infer.get_trt_runtime_version()))
        except Exception as e:  # no libnvinfer on the library path
            info["tensorrt_runtime"] = f"unavailable: {e}"
    if info["compiled_with_cuda"]:
        info["device_count"] = paddle.device.cuda.device_count()
        if info["device_count"]:
            info["device_name"] = paddle.device.cuda.get_device_name()
    return info


def check_model(repository: Path, model: str, tensorrt: bool) -> dict:
    import numpy as np

    from services.runtime.repository import ModelRepository
    from services.runtime.runner import PaddleRunner, RunnerSettings

    version = ModelRepository(repository).open(model)
    ids = version.tokenizer()(TEXTS)
    output = version.config.outputs[0].name
    reference = PaddleRunner(version, RunnerSettings(device="cpu")).run(ids)[output]
    result = {"model": model, "version": version.version}
    engines = {"gpu": RunnerSettings(device="gpu")}
    if tensorrt:
        engines["tensorrt_fp16"] = RunnerSettings(device="gpu", tensorrt=True, tensorrt_precision="fp16")
    for name, settings in engines.items():
        got = PaddleRunner(version, settings).run(ids)[output]
        result[f"max_abs_diff_{name}_vs_cpu"] = float(np.abs(got - reference).max())
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu.gpu_info", description=__doc__.split("\n\n")[0])
    p.add_argument("--repository", type=Path)
    p.add_argument("--model", default="intent")
    p.add_argument("--tensorrt", action="store_true", help="also check the TensorRT FP16 engine")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    info = describe()
    print(f"paddle.__version__                  = {info['paddle_version']} ({info['paddle_commit'][:10]})")
    print(f"CUDA / cuDNN                        = {info['cuda']} / {info['cudnn']}")
    print(f"TensorRT compiled / runtime         = {info['tensorrt_compile']} / {info['tensorrt_runtime']}")
    print(f"paddle.device.cuda.get_device_name() = {info['device_name']} ({info['device_count']} visible)")
    problems = []
    major = int(info["paddle_version"].split(".")[0])
    if major < 3 and info["paddle_version"] != "0.0.0":  # 0.0.0 = a develop build
        problems.append(
            f"Paddle {info['paddle_version']} cannot load PIR .json programs: use a Paddle 3.x GPU build "
            "(see bench/gpu/README.md), or re-export a legacy .pdmodel on this machine"
        )
    if not info["compiled_with_cuda"]:
        problems.append("this Paddle build has no CUDA (a CPU wheel shadows the GPU one?)")
    elif not info["device_count"]:
        problems.append("Paddle sees no GPU (driver, CUDA_VISIBLE_DEVICES, docker --gpus all?)")
    if not problems and args.repository:
        check = check_model(args.repository, args.model, args.tensorrt)
        info["model_check"] = check
        for key, value in check.items():
            if key.startswith("max_abs_diff"):
                print(f"{key:<36}= {value:.2e}")
    if args.json:
        args.json.write_text(json.dumps(info | {"problems": problems}, indent=2) + "\n", "utf-8")
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
