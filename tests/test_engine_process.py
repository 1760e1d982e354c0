"""The engine process: same answers as the in-process backend, a failing batch leaves it alive, clean close."""

import numpy as np
import pytest

from services.runtime.repository import ModelRepository
from services.worker.backends import PaddleBackend
from services.worker.engine_process import EngineProcessBackend

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
    with pytest.raises(RuntimeError, match="not running"):
        engine.infer(ids)


def test_engine_process_start_failure_is_clear(model_repo):
    with pytest.raises(RuntimeError, match="failed to start: RepositoryError"):
        EngineProcessBackend(str(model_repo), "intent", 99)
