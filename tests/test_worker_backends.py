"""Every worker backend implements the whole `Backend` protocol (infer, health, alive, close): the model
manager calls them directly, with no `getattr` fallback hiding a backend that cannot say it died."""

from __future__ import annotations

import inspect

import pytest

from services.worker.backends import Backend, FakeBackend, PaddleBackend
from services.worker.engine_process import EngineProcessBackend
from services.worker.onnx_backend import OnnxRuntimeBackend

METHODS = ("infer", "health", "alive", "close")


@pytest.mark.parametrize("cls", [PaddleBackend, FakeBackend, OnnxRuntimeBackend, EngineProcessBackend])
def test_each_backend_implements_the_protocol(cls):
    for name in METHODS:
        assert name in {n for n, _ in inspect.getmembers(Backend)}, name
        method = getattr(cls, name, None)
        assert callable(method), f"{cls.__name__}.{name} is missing"
        assert method is not getattr(Backend, name), f"{cls.__name__}.{name} is the protocol's stub"


def test_an_in_process_backend_is_alive_answers_health_and_closes():
    from services.runtime.repository import Task

    backend = FakeBackend(task=Task.CLASSIFICATION, width=3)
    assert backend.alive() is True
    backend.health()
    assert backend.batches == [1]
    assert backend.close() is None
