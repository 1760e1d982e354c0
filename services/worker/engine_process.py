"""Run a backend in its own process, so the engine never holds the server's GIL.

`predictor.run()` holds the GIL for the whole forward pass. Run in the server process, it stops the event loop
from reading requests while a batch computes, so the next batch can only hold what arrived before it — under
load, batches of one. In an engine process the server keeps admitting and queueing requests while the engine
computes, and each batch takes everything that queued meanwhile (the router / engine split of Triton and TEI).

The parent side implements the same `Backend` interface; calls travel over a `multiprocessing` pipe (a batch of
int64 ids out, float32 outputs back: a few KB, far cheaper than the forward pass). The batcher calls `infer`
from its single worker thread, one batch at a time; a lock keeps that true for `health()` too. If the engine
process dies, calls fail with `EngineUnavailable` (503: the batch fails, the server lives) until the version is
reloaded. A call the engine does not answer within `call_timeout_s` means a hung engine (a deadlock, a stopped
process): it is killed, so the pipe never carries a stale answer and the watchdog replaces it.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import threading
from contextlib import contextmanager
from multiprocessing.connection import Connection

import numpy as np

from services.runtime.repository import ModelRepository
from services.runtime.runner import RunnerSettings
from services.worker.errors import EngineUnavailable

log = logging.getLogger(__name__)
START_TIMEOUT_S = 120


def _serve(
    conn: Connection, repository: str, name: str, version: int, kind: str, runner: RunnerSettings, env: dict
) -> None:
    """Child: build the backend with the parent's `runner` settings, then answer ("infer", ids) /
    ("health", None) / ("close", None). `env`: the numeric libraries' own variables (MKL_, OMP_, GLOG_)."""
    os.environ.update(env)
    try:
        from services.worker.backends import create_backend

        backend = create_backend(kind, ModelRepository(repository).open(name, version), runner)
        conn.send(("ready", backend.max_batch_size))
    except Exception as e:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return
    while True:
        try:
            op, payload = conn.recv()
        except (EOFError, OSError):
            return
        if op == "close":
            return
        try:
            result = backend.infer(payload) if op == "infer" else backend.health()
            conn.send(("ok", result))
        except Exception as e:  # noqa: BLE001 - one failing batch must not end the engine
            conn.send(("error", f"{type(e).__name__}: {e}"))


class EngineProcessBackend:
    """A backend living in a child process (spawned: no inherited threads or Paddle state)."""

    def __init__(
        self,
        repository: str,
        name: str,
        version: int,
        kind: str = "paddle",
        call_timeout_s: float | None = None,
        runner: RunnerSettings | None = None,
    ):
        self.name = f"{kind}/process"
        self.call_timeout_s = call_timeout_s  # None: wait as long as the engine takes
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        env = {k: v for k, v in os.environ.items() if k.startswith(("MKL_", "OMP_", "GLOG_"))}
        self._proc = ctx.Process(
            target=_serve,
            args=(child, repository, name, version, kind, runner or RunnerSettings(), env),
            name=f"engine-{name}-v{version}",
            daemon=True,
        )
        self._proc.start()
        child.close()
        self._lock = threading.Lock()
        if not self._conn.poll(START_TIMEOUT_S):
            self.close()
            raise RuntimeError(f"engine process for {name} v{version} did not start in {START_TIMEOUT_S} s")
        status, payload = self._conn.recv()
        if status != "ready":
            self.close()
            raise RuntimeError(f"engine process for {name} v{version} failed to start: {payload}")
        self.max_batch_size = payload

    def _call(self, op: str, payload=None):
        with self._lock:
            if not self._proc.is_alive():
                raise EngineUnavailable(
                    f"engine process {self._proc.name} is not running (exit code {self._proc.exitcode}); "
                    "it is being restarted"
                )
            try:
                self._conn.send((op, payload))
                if self.call_timeout_s is not None and not self._conn.poll(self.call_timeout_s):
                    self._proc.kill()  # hung: an answer arriving later would be read as the next call's
                    self._proc.join(timeout=5)
                    raise EngineUnavailable(
                        f"engine process {self._proc.name} did not answer within {self.call_timeout_s:g} s; "
                        "it was stopped and is being restarted"
                    )
                status, result = self._conn.recv()
            except (EOFError, OSError, BrokenPipeError) as e:
                raise EngineUnavailable(f"engine process {self._proc.name} died ({type(e).__name__})") from e
        if status != "ok":
            raise RuntimeError(result)
        return result

    @contextmanager
    def patient(self):
        """No call timeout inside (warm-up: a first TensorRT shape can take minutes to build)."""
        timeout, self.call_timeout_s = self.call_timeout_s, None
        try:
            yield
        finally:
            self.call_timeout_s = timeout

    def infer(self, input_ids: np.ndarray) -> dict[str, np.ndarray]:
        return self._call("infer", input_ids)

    def health(self) -> None:
        self._call("health")

    def alive(self) -> bool:
        """Cheap (no round trip): the engine process is still running."""
        return self._proc.is_alive()

    def close(self) -> None:
        try:
            if self._proc.is_alive():
                with self._lock:
                    self._conn.send(("close", None))
            self._proc.join(timeout=5)
        except (OSError, BrokenPipeError):
            pass
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(timeout=5)
        self._conn.close()
