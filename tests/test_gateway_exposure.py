"""What the public port shows and what only the internal port does (issue 11 item 9), and what `make run`
prints about credentials (item 11): contract tests against fake workers, no server."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from services.gateway.api.app import create_app
from services.gateway.edge.guard import EdgeSettings
from services.gateway.settings import GatewaySettings
from services.stack.launcher import DEMO_KEY, access_lines
from tests.gateway_app import A, B, build, headers
from tests.gateway_fakes import FakeWorkers, demo_store

DOCS = ("/docs", "/redoc", "/openapi.json")


def production_app(tmp_path, **settings):
    keys = tmp_path / "keys.yaml"
    digest = hashlib.sha256(b"a-real-production-key-0001").hexdigest()
    keys.write_text(yaml.safe_dump({"keys": [{"tenant": "acme", "sha256": digest, "scopes": ["chat"]}]}))
    fake = FakeWorkers([A, B])
    gateway = GatewaySettings(
        workers={"intent": [A], "sentiment": [A], "faq": [A]}, model_repository=None, **settings
    )
    edge = EdgeSettings(mode="production", api_keys_file=keys)
    return create_app(
        gateway, edge, registry=CollectorRegistry(), transport=fake.transport, store=demo_store()
    )


def test_docs_are_on_in_development_and_off_in_production(tmp_path):
    app, *_ = build(tmp_path)
    with TestClient(app) as client:
        assert [client.get(p).status_code for p in DOCS] == [200, 200, 200]
    with TestClient(production_app(tmp_path)) as client:
        assert [client.get(p).status_code for p in DOCS] == [404, 404, 404]
    with TestClient(production_app(tmp_path, docs_enabled=True)) as client:  # enabled on purpose
        assert [client.get(p).status_code for p in DOCS] == [200, 200, 200]
    app, *_ = build(tmp_path, docs_enabled=False)
    with TestClient(app) as client:
        assert [client.get(p).status_code for p in DOCS] == [404, 404, 404]


def test_public_port_has_no_metrics_and_a_status_only_readyz(tmp_path):
    app, fake, _ = build(tmp_path)
    with TestClient(app) as client:
        internal = TestClient(app.state.internal_app)
        client.post("/v1/intent", json={"text": "你好"}, headers=headers())
        assert client.get("/metrics").status_code == 404
        assert "/metrics" not in client.get("/openapi.json").json()["paths"]
        assert client.get("/readyz").json() == {"status": "ready"}
        detailed = internal.get("/readyz").json()
        assert detailed["status"] == "ready" and A.removeprefix("http://") in str(detailed["upstreams"])
        assert (
            'kefu_gateway_requests_total{route="/v1/intent",status="200"} 1.0'
            in internal.get("/metrics").text
        )
        fake.replica(A).mode = fake.replica(B).mode = "down"
        asyncio.run(app.state.pool.refresh())
        public = client.get("/readyz")
        assert public.status_code == 503 and public.json() == {"status": "unavailable"}
        assert internal.get("/readyz").status_code == 503  # the same codes on both ports
        assert internal.post("/v1/chat", json={}).status_code == 404  # no API on the internal port


def test_internal_app_answers_errors_in_the_uniform_body(tmp_path):
    app, *_ = build(tmp_path)
    r = TestClient(app.state.internal_app).get("/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found" and r.headers["x-request-id"]


URL = "http://127.0.0.1:8000"


def test_make_run_prints_the_demo_key_only_in_development_with_the_shipped_keys():
    development = "\n".join(access_lines({}, URL))
    assert DEMO_KEY in development and f"{URL}/docs" in development


@pytest.mark.parametrize(
    "env",
    [
        {"KEFU_GATEWAY_MODE": "production", "KEFU_GATEWAY_API_KEYS_FILE": "/etc/kefu/keys.yaml"},
        {"KEFU_GATEWAY_API_KEYS_FILE": "/etc/kefu/keys.yaml"},
        {"KEFU_GATEWAY_MODE": "production"},
    ],
)
def test_make_run_never_prints_the_demo_key_in_production_or_with_own_keys(env):
    out = "\n".join(access_lines(env, URL))
    assert DEMO_KEY not in out and "$KEFU_API_KEY" in out
    if env.get("KEFU_GATEWAY_MODE") == "production":
        assert f"{URL}/docs" not in out
