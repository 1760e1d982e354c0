"""The engine process: same answers as the in-process backend, a failing batch leaves it alive, clean close."""

import numpy as np
import pytest

from services.runtime.repository import ModelRepository
from services.worker.backends import PaddleBackend
from services.worker.engine_process import EngineProcessBackend
from services.worker.errors import EngineUnavailable

pytestmark = pytest.mark.slow


def test_engine_process_answers_like_in_process(model_repo):
    version = ModelRepository(model_repo).open("intent")
    engine = EngineProcessBackend(str(model_repo), "intent", 1)
    try:
        assert engine.max_batch_size == version.config.max_batch_size
        engine.health()
        local = PaddleBackend(version)
        ids = version.tokenizer()(["在吗", "我的快递三天了还没到", "退款"])
        np.testing.assert_allclose(engine.infer(ids)["probs"], local.infer(ids)["probs"], atol=1e-6)
        with pytest.raises(RuntimeError, match="input_ids must be an int64"):
            engine.infer(ids.astype(np.int32))  # the child reports the error and lives on
        assert engine.infer(ids[:1])["probs"].shape == (1, len(version.labels))
    finally:
        engine.close()
    with pytest.raises(EngineUnavailable, match="not running"):
        engine.infer(ids)


def test_engine_process_start_failure_is_clear(model_repo):
    with pytest.raises(RuntimeError, match="failed to start: RepositoryError"):
        EngineProcessBackend(str(model_repo), "intent", 99)


@pytest.mark.asyncio
async def test_a_dead_engine_fails_readiness_and_is_restarted(model_repo):
    """An engine process killed under the worker (OOM killer, segfault): readiness says so at once, the
    watchdog reloads that version with a fresh engine, and inference works again without a restart."""
    import asyncio
    import os
    import signal
    import time

    from prometheus_client import CollectorRegistry

    from services.worker.manager import ModelManager
    from services.worker.metrics import WorkerMetrics
    from services.worker.settings import WorkerSettings

    settings = WorkerSettings(
        repository=model_repo, models="intent", engine_check_interval_s=0.2, warmup=False
    )
    manager = ModelManager(ModelRepository(model_repo), settings, WorkerMetrics(CollectorRegistry()))
    await manager.start()
    try:
        served = manager.get("intent")
        assert manager.is_ready() and served.alive
        first = (await served.infer(["我的快递到哪了"], 10.0))[0]["probs"]
        os.kill(served.backend._proc.pid, signal.SIGKILL)
        await asyncio.to_thread(served.backend._proc.join, 5)
        assert not manager.is_ready() and not manager.is_ready("intent")  # before any restart
        deadline = time.monotonic() + 60
        while (
            not (manager.is_ready() and manager.get("intent") is not served) and time.monotonic() < deadline
        ):
            await asyncio.sleep(0.1)
        assert manager.is_ready(), "the watchdog did not bring the engine back"
        again = (await manager.get("intent").infer(["我的快递到哪了"], 10.0))[0]["probs"]
        np.testing.assert_allclose(again, first, atol=1e-6)
    finally:
        await manager.close()


def test_the_engine_takes_the_workers_runner_settings_not_the_environment(model_repo, monkeypatch):
    """The worker reads KEFU_RUNNER_* once (ModelManager.runner) and hands the object to every backend, in
    this process or in an engine process; nothing below reads the environment again."""
    from services.runtime.runner import RunnerSettings
    from services.worker.backends import create_backend

    version = ModelRepository(model_repo).open("intent")
    monkeypatch.setenv("KEFU_RUNNER_ONEDNN", "true")
    local = create_backend("paddle", version, RunnerSettings(onednn=False, cpu_threads=2))
    assert (local._runner.settings.onednn, local._runner.settings.cpu_threads) == (False, 2)
    monkeypatch.setenv("KEFU_RUNNER_CPU_THREADS", "not a number")  # a child reading it would fail to start
    engine = EngineProcessBackend(str(model_repo), "intent", 1, runner=RunnerSettings(cpu_threads=1))
    try:
        engine.health()
    finally:
        engine.close()
