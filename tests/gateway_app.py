"""Builds a gateway app for contract tests: fake workers (two replicas), the demo knowledge base in an
in-memory store, API keys with different scopes and rates, a fresh Prometheus registry."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from services.faq.store import FaqStore
from services.gateway.api.app import create_app
from services.gateway.edge.guard import EdgeSettings
from services.gateway.settings import GatewaySettings
from tests.gateway_fakes import DEMO_KEY, FakeWorkers, demo_store

A, B = "http://127.0.0.1:18001", "http://127.0.0.2:18001"
KEYS = {  # key -> (tenant, scopes, rate_per_s, burst)
    DEMO_KEY: ("demo", ["chat", "admin"], 1000, 1000),
    "chat-only-key-0001": ("acme", ["chat"], 1000, 1000),
    "admin-only-key-0001": ("ops", ["admin"], 1000, 1000),
    "slow-key-0001": ("slow", ["chat"], 0.001, 1),
}


def headers(key: str = DEMO_KEY) -> dict[str, str]:
    return {"X-API-Key": key}


@dataclass
class Gateway:
    app: FastAPI
    client: TestClient
    fake: FakeWorkers
    registry: CollectorRegistry
    store: FaqStore

    @property
    def internal(self) -> TestClient:
        """A client of the internal port's app (/metrics, the detailed /readyz), sharing the gateway's state."""
        return TestClient(self.app.state.internal_app)

    def sample(self, name: str, **labels) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    def chat(self, text: str, session_id: str = "s-1", key: str = DEMO_KEY, **extra):
        body = {"session_id": session_id, "text": text, **extra}
        return self.client.post("/v1/chat", json=body, headers=headers(key))


def write_keys(tmp_path: Path) -> Path:
    keys = [
        {
            "tenant": t,
            "sha256": hashlib.sha256(k.encode()).hexdigest(),
            "scopes": s,
            "rate_per_s": r,
            "burst": b,
        }
        for k, (t, s, r, b) in KEYS.items()
    ]
    path = tmp_path / "api_keys.yaml"
    path.write_text(yaml.safe_dump({"keys": keys}, allow_unicode=True), "utf-8")
    return path


def build(
    tmp_path: Path, store: FaqStore | None = None, **overrides
) -> tuple[FastAPI, FakeWorkers, CollectorRegistry]:
    fake = FakeWorkers([A, B])
    options = {"model_repository": None, "refresh_interval_s": 3600, "breaker_failures": 3, **overrides}
    settings = GatewaySettings(workers={"intent": [A, B], "sentiment": [A, B], "faq": [A, B]}, **options)
    edge = EdgeSettings(
        api_keys_file=write_keys(tmp_path), max_text_chars=64, max_list_size=8, max_body_bytes=4096
    )
    registry = CollectorRegistry()
    store = store if store is not None else demo_store()
    app = create_app(settings, edge, registry=registry, transport=fake.transport, store=store)
    return app, fake, registry
