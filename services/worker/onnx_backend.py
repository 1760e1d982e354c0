"""ONNX Runtime backend: the version's Paddle PIR program converted with paddle2onnx, run on the CPU provider.

A measured peer of the Paddle Inference backend, not the default. The version folder is sha256-manifested
and is never written to: the converted model is cached under `$KEFU_ONNX_CACHE` (default
`~/.cache/kefu/onnx`) as `<key>.onnx`, where the key is a sha256 over the manifest's sha256 of
`inference.json` and `inference.pdiparams`, the paddle2onnx version and the opset. Same weights, same file;
new weights or a new converter, a new file. Concurrent workers converting the same version take a file lock,
and the file appears atomically (written beside, then renamed).

Conversion runs the paddle2onnx Python API (which reads PIR `.json` programs) in a child process
(`python -m services.worker.onnx_backend convert …`):
  * paddle2onnx reports a failed conversion by logging and calling `sys.exit`, and can abort inside C++; in a
    child that is a clean `RuntimeError` here, never a dead worker;
  * the worker process never imports Paddle (about 4 s and a few hundred MB it would keep for nothing).

Session: CPUExecutionProvider, `intra_op_num_threads` = the worker's `KEFU_RUNNER_CPU_THREADS` (`RunnerSettings.cpu_threads`, default 1, the same
knob as the Paddle backend), `inter_op_num_threads` = 1, all graph optimisations. Batch and sequence
dimensions are dynamic. `InferenceSession.run` releases the GIL.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

from services.runtime.repository import MANIFEST, ModelVersion, sha256_file
from services.worker.backends import InProcessBackend

log = logging.getLogger(__name__)

OPSET = 17  # LayerNormalization is a native op from 17 on, which ORT fuses; 1.31 runs up to opset 23
CONVERT_TIMEOUT_S = 600
_convert_lock = threading.Lock()  # one conversion at a time per process (the file lock covers processes)


def cache_dir() -> Path:
    return Path(os.environ.get("KEFU_ONNX_CACHE") or Path.home() / ".cache" / "kefu" / "onnx").expanduser()


def _paddle2onnx_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("paddle2onnx")
    except PackageNotFoundError as e:
        raise RuntimeError("onnxruntime backend: paddle2onnx is not installed, cannot convert") from e


def _source_sha256s(version: ModelVersion) -> dict[str, str]:
    """sha256 of the program and weights, from the (verified) manifest; hashed here if it has no entry."""
    try:
        listed = json.loads((version.path / MANIFEST).read_text("utf-8"))["files"]
    except (OSError, ValueError, KeyError):
        listed = {}
    out = {}
    for path in (version.model_file, version.params_file):
        meta = listed.get(path.name)
        out[path.name] = meta["sha256"] if meta and "sha256" in meta else sha256_file(path)
    return out


def cache_key(version: ModelVersion, converter: str | None = None) -> str:
    sums = _source_sha256s(version)
    material = {
        "inference.json": sums[version.model_file.name],
        "inference.pdiparams": sums[version.params_file.name],
        "paddle2onnx": converter or _paddle2onnx_version(),
        "opset": OPSET,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def convert_in_process(model_file: Path, params_file: Path, out_file: Path, opset: int = OPSET) -> None:
    """Runs paddle2onnx here. Used by the child process; raises RuntimeError when no model comes out."""
    os.environ["POLYGRAPHY_AUTOINSTALL_DEPS"] = "0"  # never pip-install at run time
    import paddle2onnx

    try:
        paddle2onnx.export(
            str(model_file),
            str(params_file),
            str(out_file),
            opset_version=opset,
            auto_upgrade_opset=True,
            enable_onnx_checker=True,
            optimize_tool="onnxoptimizer",
        )
    except BaseException as e:  # paddle2onnx exits (SystemExit) on failure, or leaves a name unbound
        raise RuntimeError(f"paddle2onnx failed on {model_file}: {type(e).__name__}: {e}") from None
    if not out_file.is_file() or out_file.stat().st_size == 0:
        raise RuntimeError(f"paddle2onnx wrote no model for {model_file}")


def _run_converter(version: ModelVersion, out_file: Path) -> None:
    env = dict(
        os.environ, POLYGRAPHY_AUTOINSTALL_DEPS="0", GLOG_minloglevel=os.environ.get("GLOG_minloglevel", "2")
    )
    cmd = [
        sys.executable,
        "-m",
        "services.worker.onnx_backend",
        "convert",
        str(version.model_file),
        str(version.params_file),
        str(out_file),
    ]
    root = Path(__file__).resolve().parents[2]  # so `-m services…` resolves even if the cwd is elsewhere
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH", "")) if p)
    try:
        proc = subprocess.run(
            cmd, env=env, capture_output=True, text=True, errors="replace", timeout=CONVERT_TIMEOUT_S
        )
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(
            f"onnxruntime backend: converting {version.name} v{version.version} took over {CONVERT_TIMEOUT_S} s"
        ) from e
    if proc.returncode != 0 or not out_file.is_file():
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise RuntimeError(
            f"onnxruntime backend: paddle2onnx could not convert {version.name} v{version.version} "
            f"({version.model_file}), exit code {proc.returncode}:\n{tail}"
        )


def ensure_onnx(version: ModelVersion) -> Path:
    """The cached .onnx file for this version, converting it first if the cache has none."""
    directory = cache_dir()
    key = cache_key(version)
    target = directory / f"{key}.onnx"
    if target.is_file():
        return target
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RuntimeError(f"onnxruntime backend: cannot create the ONNX cache {directory}: {e}") from e
    with _convert_lock, open(directory / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another worker may be converting the same version right now
        if target.is_file():
            return target
        fd, tmp_name = tempfile.mkstemp(prefix=f".{key[:16]}-", suffix=".onnx", dir=directory)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            log.info("converting %s v%s to ONNX into %s", version.name, version.version, target)
            _run_converter(version, tmp)
            tmp.chmod(0o644)  # mkstemp makes it private; the cache may be shared by workers of other users
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        (directory / f"{key}.json").write_text(
            json.dumps(
                {
                    "model": version.name,
                    "version": version.version,
                    "source": str(version.path),
                    "sha256": _source_sha256s(version),
                    "opset": OPSET,
                },
                indent=2,
            )
            + "\n",
            "utf-8",
        )
    return target


class OnnxRuntimeBackend(InProcessBackend):
    name = "onnxruntime"

    def __init__(self, version: ModelVersion, cpu_threads: int = 1):
        if cpu_threads < 1:
            raise RuntimeError(f"onnxruntime backend: cpu_threads must be at least 1, got {cpu_threads}")
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise RuntimeError("onnxruntime backend: the onnxruntime package is not installed") from e
        self.version = version
        self.max_batch_size = version.config.max_batch_size
        self.onnx_file = ensure_onnx(version)
        self.cpu_threads = cpu_threads
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.cpu_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only
        try:
            self._session = ort.InferenceSession(
                str(self.onnx_file), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # a corrupt cache file: say which one, so it can be deleted
            raise RuntimeError(f"onnxruntime backend: cannot load {self.onnx_file}: {e}") from e
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise RuntimeError(
                f"{self.onnx_file}: expected one input (input_ids), found {[i.name for i in inputs]}"
            )
        self._input_name = inputs[0].name
        self._output_names = [o.name for o in version.config.outputs]
        actual = [o.name for o in self._session.get_outputs()]
        if len(actual) != len(self._output_names):
            raise RuntimeError(
                f"{self.onnx_file}: config.yaml lists outputs {self._output_names}, the model has {actual}"
            )
        self._actual_outputs = actual  # paddle2onnx names them fetch_name_<i>, in the program's fetch order
        log.info(
            "loaded %s v%s on onnxruntime %s (%d thread(s)) from %s",
            version.name,
            version.version,
            ort.__version__,
            self.cpu_threads,
            self.onnx_file,
        )

    def infer(self, input_ids: np.ndarray) -> dict[str, np.ndarray]:
        if input_ids.ndim != 2 or input_ids.dtype != np.int64:
            raise ValueError(
                f"input_ids must be an int64 [batch, seq] array, got {input_ids.dtype} {input_ids.shape}"
            )
        results = self._session.run(self._actual_outputs, {self._input_name: np.ascontiguousarray(input_ids)})
        return dict(zip(self._output_names, results, strict=True))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m services.worker.onnx_backend")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser(
        "convert", help="convert a Paddle PIR program to ONNX (what the backend runs in a child)"
    )
    c.add_argument("model_file", type=Path)
    c.add_argument("params_file", type=Path)
    c.add_argument("out_file", type=Path)
    c.add_argument("--opset", type=int, default=OPSET)
    args = p.parse_args(argv)
    try:
        convert_in_process(args.model_file, args.params_file, args.out_file, args.opset)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
