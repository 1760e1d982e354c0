"""Repeated failures are logged once per interval with a count, not once per request (issue 14 item 8)."""

from __future__ import annotations

import logging

from fastapi.testclient import TestClient

from services.common.logthrottle import LogThrottle
from services.faq.domain import StoreUnavailable
from tests.gateway_app import A, B, build
from tests.gateway_fakes import demo_store


def _store_down(*args, **kwargs):
    raise StoreUnavailable("milvus search failed: connection refused")


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_first_occurrence_at_once_then_one_line_per_interval_with_the_count(caplog):
    clock = Clock()
    throttle = LogThrottle(logging.getLogger("t.throttle"), interval_s=30, clock=clock)
    with caplog.at_level(logging.WARNING, logger="t.throttle"):
        for _ in range(15 * 60):  # 15 minutes, one failure a second
            throttle.warning("intent@a", "intent call to %s failed", "a")
            clock.now += 1
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 30
    assert lines[0] == "intent call to a failed"
    assert lines[1] == "intent call to a failed (and 29 more like it in the last 30 s)"
    assert all("29 more" in line for line in lines[1:])


def test_keys_are_throttled_independently(caplog):
    clock = Clock()
    throttle = LogThrottle(logging.getLogger("t.keys"), interval_s=30, clock=clock)
    with caplog.at_level(logging.WARNING, logger="t.keys"):
        assert throttle.warning("a", "a down") and throttle.warning("b", "b down")
        assert not throttle.warning("a", "a down")
    assert [r.getMessage() for r in caplog.records] == ["a down", "b down"]


def test_an_outage_writes_a_few_lines_not_several_per_failed_chat(tmp_path, caplog):
    store = demo_store()
    app, fake, _ = build(tmp_path, store=store)
    with TestClient(app) as client, caplog.at_level(logging.INFO):
        store.search = _store_down  # with the store up, chat would answer from keywords alone (degraded 200)
        fake.replica(A).mode = fake.replica(B).mode = "down"
        fake.down_models.add("faq")
        for i in range(60):
            body = {"session_id": f"s{i}", "text": f"下单后多久发货？{i}"}
            r = client.post("/v1/chat", json=body, headers={"X-API-Key": "kefu-demo-key-change-me"})
            assert r.status_code == 503
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("services")]
    # 60 failed chats: at most a line per replica per role and one per degraded part, not 3 per chat
    assert len(warnings) <= 12, "\n".join(r.getMessage() for r in warnings)
    assert not any(r.exc_info for r in warnings)
