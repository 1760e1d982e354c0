"""The OpenAPI documents of the gateway and the worker, built from their app factories with no network:
`python -m tests.openapi_docs OUT_DIR` writes gateway.json and worker.json (sorted keys, 2-space indent).
tests/test_openapi_snapshot.py compares them with the committed copies in docs/openapi/."""

from __future__ import annotations

import importlib
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module(*names: str):
    for name in names:  # the gateway app moved to services/gateway/api/ (issue 13); older trees had it flat
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError:
            continue
    raise ModuleNotFoundError(names[0])


def gateway_openapi() -> dict:
    from prometheus_client import CollectorRegistry

    from services.gateway.settings import GatewaySettings
    from tests.gateway_fakes import demo_store

    app_module = _module("services.gateway.api.app", "services.gateway.app")
    edge_module = _module("services.gateway.edge.guard", "services.gateway.edge")
    store = demo_store()
    url = "http://127.0.0.1:1"
    settings = GatewaySettings(
        workers={"intent": [url], "sentiment": [url], "faq": [url]}, model_repository=None, docs_enabled=True
    )
    app = app_module.create_app(
        settings, edge_module.EdgeSettings(), registry=CollectorRegistry(), store=store
    )
    return app.openapi()


def worker_openapi() -> dict:
    from prometheus_client import CollectorRegistry

    from services.runtime.repository import ModelRepository
    from services.worker.app import create_worker_app
    from services.worker.backends import FakeBackend
    from services.worker.manager import ModelManager
    from services.worker.metrics import WorkerMetrics
    from services.worker.settings import WorkerSettings

    with tempfile.TemporaryDirectory() as tmp:
        cfg = WorkerSettings(repository=Path(tmp), docs_enabled=True, warmup=False)
        registry = CollectorRegistry()
        metrics = WorkerMetrics(registry)
        manager = ModelManager(
            ModelRepository(Path(tmp)), cfg, metrics, backend_factory=lambda v: FakeBackend(v)
        )
        dispatch = create_worker_app(cfg, manager, metrics, registry)
        return dispatch.public.openapi()


def dump(doc: dict) -> str:
    return json.dumps(doc, ensure_ascii=False, indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    (out / "gateway.json").write_text(dump(gateway_openapi()), "utf-8")
    (out / "worker.json").write_text(dump(worker_openapi()), "utf-8")
    print(f"written {out}/gateway.json, {out}/worker.json")
