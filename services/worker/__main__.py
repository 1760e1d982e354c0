"""Run the worker: `python -m services.worker --repository model_repository [--processes 2] [--port 8001]`.

Every option is also a KEFU_WORKER_* variable (see settings.py); KEFU_RUNNER_* choose the engine settings
(threads, device, TensorRT). Two sockets are bound here, the public port (Open Inference Protocol) and the
internal port (GET /metrics, /v2/health/*), and every server process serves both from one event loop and one
set of models (`PortDispatch` picks the app by the listening port). With --processes N, uvicorn's supervisor
runs N such processes sharing both sockets; Prometheus metrics are then aggregated through a multiprocess
directory, so any process answers /metrics for all of them.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile

import uvicorn
from uvicorn.supervisors import Multiprocess

from services.runtime.cli import overrides_of, settings_parser
from services.worker.edge import WorkerHttpProtocol
from services.worker.settings import WorkerSettings


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket the server processes share (as uvicorn binds its own)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def main(argv: list[str] | None = None) -> int:
    p = settings_parser(WorkerSettings, "python -m services.worker", __doc__.split("\n\n")[0])
    args = p.parse_args(argv)
    overrides = overrides_of(args, WorkerSettings)
    settings = WorkerSettings(**overrides)  # validates before any process starts
    public, internal = bind(settings.host, settings.port), bind(settings.host, settings.internal_port)
    overrides["port"], overrides["internal_port"] = public.getsockname()[1], internal.getsockname()[1]
    settings = settings.model_copy(
        update={"port": overrides["port"], "internal_port": overrides["internal_port"]}
    )
    os.environ.setdefault("KEFU_RUNNER_CPU_THREADS", "1")
    os.environ.setdefault("MKL_DEBUG_CPU_TYPE", "5")
    multiproc_dir = None
    if settings.processes > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiproc_dir = tempfile.mkdtemp(prefix="kefu-worker-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = multiproc_dir
    print(
        f"worker: http://{settings.host}:{overrides['port']}/v2, internal (metrics, probes) "
        f"http://{settings.host}:{overrides['internal_port']}  ({settings.processes} process(es), "
        f"backend {settings.backend}, repository {settings.repository})",
        flush=True,
    )
    if settings.processes > 1:
        # uvicorn spawns the server processes: the environment is the one channel to them, and each builds
        # the same settings from it (create_app_from_env). One process is given the object itself.
        for key, value in overrides.items():
            os.environ[f"KEFU_WORKER_{key.upper()}"] = str(value)
        app, factory = "services.worker.app:create_app_from_env", True
    else:
        from services.worker.app import create_app_from_settings

        app, factory = create_app_from_settings(settings), False
    config = uvicorn.Config(
        app,
        factory=factory,
        workers=settings.processes,
        log_level=settings.log_level,
        access_log=False,  # it writes query strings as sent; edge.AccessLogMiddleware logs routes instead
        http=WorkerHttpProtocol,  # 431 over max_header_bytes (plain httptools has no limit)
        timeout_graceful_shutdown=10,
        server_header=False,
    )
    sockets = [public, internal]
    try:
        if settings.processes > 1:
            Multiprocess(config, sockets=sockets).run()
        else:
            uvicorn.Server(config).run(sockets=sockets)
    finally:
        if multiproc_dir:
            shutil.rmtree(multiproc_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
