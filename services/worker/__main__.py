"""Run the worker: `python -m services.worker --repository model_repository [--processes 2] [--port 8001]`.

Every option is also a KEFU_WORKER_* variable (see settings.py); KEFU_RUNNER_* choose the engine settings
(threads, device, TensorRT). With --processes N, N server processes share the port, each with its own
predictors; Prometheus metrics are then aggregated through a multiprocess directory.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

import uvicorn

from services.runtime.cli import overrides_of, settings_parser
from services.worker.settings import WorkerSettings


def main(argv: list[str] | None = None) -> int:
    p = settings_parser(WorkerSettings, "python -m services.worker", __doc__.split("\n\n")[0])
    p.add_argument("--log-level", default="warning", help="uvicorn log level")
    args = p.parse_args(argv)
    overrides = overrides_of(args, WorkerSettings)
    settings = WorkerSettings(**overrides)  # validates before any process starts
    for (
        key,
        value,
    ) in overrides.items():  # each server process rebuilds the same settings from the environment
        os.environ[f"KEFU_WORKER_{key.upper()}"] = str(value)
    os.environ.setdefault("KEFU_RUNNER_CPU_THREADS", "1")
    os.environ.setdefault("MKL_DEBUG_CPU_TYPE", "5")
    multiproc_dir = None
    if settings.processes > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiproc_dir = tempfile.mkdtemp(prefix="kefu-worker-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = multiproc_dir
    print(
        f"worker: http://{settings.host}:{settings.port}/v2  ({settings.processes} process(es), "
        f"backend {settings.backend}, repository {settings.repository})",
        flush=True,
    )
    try:
        uvicorn.run(
            "services.worker.app:create_app_from_env",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.processes,
            log_level=args.log_level,
            timeout_graceful_shutdown=10,
        )
    finally:
        if multiproc_dir:
            shutil.rmtree(multiproc_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
