"""A settings class that declares a field twice silently keeps the last declaration (the gateway's upstream
pool size was once replaced by the HTTP server's connection limit this way): every settings module is parsed
and each class's field names must be unique."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from pydantic import ValidationError

from services.gateway.settings import GatewaySettings

ROOT = Path(__file__).resolve().parent.parent


def duplicate_fields(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.ClassDef):
            seen: set[str] = set()
            for stmt in node.body:
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                    name = stmt.target.id
                    if name in seen:
                        found.append(f"{path.relative_to(ROOT)}: {node.name}.{name}")
                    seen.add(name)
    return found


def test_no_settings_field_is_declared_twice():
    modules = sorted(ROOT.glob("services/**/settings.py")) + [
        ROOT / "services" / "gateway" / "edge" / "guard.py"
    ]
    assert len(modules) >= 4
    assert [d for m in modules for d in duplicate_fields(m)] == []


def test_the_upstream_pool_and_the_server_limit_are_separate_settings():
    from services.gateway.settings import GatewaySettings

    s = GatewaySettings()
    assert s.max_connections == 100  # pooled connections per role towards the workers
    assert s.server_limit_concurrency == 2048  # uvicorn's limit_concurrency


def test_worker_urls_are_checked_the_same_way_for_stable_and_canary_pools():
    every = {"intent": ["http://a:8001/"], "sentiment": ["http://a:8001"], "faq": ["https://b"]}
    s = GatewaySettings(workers=every, canary_workers={"intent": ["http://c:8001/"], "faq": []})
    assert s.workers["intent"] == ["http://a:8001"] and s.canary_workers == {"intent": ["http://c:8001"]}
    bad = [
        ({"workers": {**every, "faq": []}}, "workers: no URL for 'faq'"),
        ({"workers": {**every, "intnet": ["http://a"]}}, "workers: unknown role 'intnet'"),
        (
            {"workers": {**every, "faq": ["ftp://b"]}},
            "workers\\['faq'\\]: 'ftp://b' is not an http\\(s\\) URL",
        ),
        ({"workers": every, "canary_workers": {"intnet": ["http://c"]}}, "canary_workers: unknown role"),
        ({"workers": every, "canary_workers": {"faq": ["b:80"]}}, "canary_workers\\['faq'\\]: 'b:80' is not"),
    ]
    for kwargs, message in bad:
        with pytest.raises(ValidationError, match=message):
            GatewaySettings(**kwargs)


def test_the_settings_tables_are_generated_from_the_classes_and_up_to_date():
    """docs/settings.md and the gateway README's tables are rendered from the fields (default, description):
    a field added, a default changed or a description reworded without re-running the generator fails here."""
    from services.common import settings_doc

    assert settings_doc.main(["--check"]) == 0
    text = (ROOT / "docs" / "settings.md").read_text("utf-8")
    for cls in settings_doc.documented().values():
        prefix = cls.model_config["env_prefix"]
        missing = [n for n in cls.model_fields if f"`{prefix}{n.upper()}`" not in text]
        assert missing == [], (cls.__name__, missing)


def test_a_setting_without_a_description_cannot_be_documented():
    from pydantic import Field
    from pydantic_settings import BaseSettings, SettingsConfigDict

    from services.common.settings_doc import render

    class Partly(BaseSettings):
        model_config = SettingsConfigDict(env_prefix="KEFU_X_")
        told: int = Field(1, description="explained")
        silent: int = 2

    with pytest.raises(ValueError, match="Partly.silent has no description"):
        render("<!-- settings:Partly:begin -->\n<!-- settings:Partly:end -->", {"Partly": Partly})


def test_one_config_object_reaches_every_part_of_the_gateway(tmp_path, monkeypatch):
    """`Config.from_env` reads every section once (flags over the environment); the app is built from the
    object, so a section's value reaches its part without anyone writing it back into the environment."""
    import os

    from fastapi.testclient import TestClient
    from prometheus_client import CollectorRegistry

    from services.faq.admin_http import FaqAdminSettings
    from services.gateway.api.app import create_app
    from services.gateway.config import Config
    from services.gateway.edge.guard import EdgeSettings
    from tests.gateway_app import DEMO_KEY, A, B, write_keys
    from tests.gateway_fakes import FakeWorkers, demo_store

    monkeypatch.setenv("KEFU_GATEWAY_PORT", "8100")
    monkeypatch.setenv("KEFU_FAQ_ADMIN_MAX_BODY_BYTES", "4096")
    before = dict(os.environ)
    config = Config.from_env(port=8200, internal_port=9200)
    assert (config.gateway.port, config.gateway.internal_port) == (8200, 9200)  # the flag wins
    assert config.faq_admin.max_body_bytes == 4096 and config.edge.mode == "development"
    assert dict(os.environ) == before

    fake = FakeWorkers([A, B])
    app = create_app(
        GatewaySettings(
            workers={"intent": [A, B], "sentiment": [A, B], "faq": [A, B]}, model_repository=None
        ),
        EdgeSettings(api_keys_file=write_keys(tmp_path), max_body_bytes=64 * 1024),
        registry=CollectorRegistry(),
        transport=fake.transport,
        store=demo_store(),
        admin_settings=FaqAdminSettings(max_body_bytes=2048),
    )
    faq = {"faq_id": "cfg-1", "question": "配置对象测试问题", "answer": "答" * 1500, "category": "其他"}
    with TestClient(app) as client:
        refused = client.post("/admin/faq/faqs", json=faq, headers={"X-API-Key": DEMO_KEY})
    assert refused.status_code == 413, refused.text  # the admin section's 2 KiB, not its 256 KiB default


def test_the_write_check_consistency_is_a_store_setting_by_name(monkeypatch):
    """It was KEFU_FAQ_ADMIN_CONSISTENCY_LEVEL, a FaqSettings field that read like a FaqAdminSettings one
    (prefix KEFU_FAQ_ADMIN_); the new name says what it is, and the old one still works."""
    from services.faq.settings import FaqSettings

    assert FaqSettings().write_check_consistency_level == "Strong"
    monkeypatch.setenv("KEFU_FAQ_ADMIN_CONSISTENCY_LEVEL", "Bounded")
    assert FaqSettings().write_check_consistency_level == "Bounded"
    monkeypatch.setenv("KEFU_FAQ_WRITE_CHECK_CONSISTENCY_LEVEL", "Session")
    assert FaqSettings().write_check_consistency_level == "Session"  # the new name first
