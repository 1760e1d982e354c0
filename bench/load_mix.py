"""Locust file of the request mix `make load` and `make reliability` replay (run by bench/load_run.py, headless).

    chat        80 %  POST /v1/chat, real messages (the demo KB's dev queries + the intent dev texts), a session
                      per user that starts afresh every few turns
    faq_search  15 %  POST /v1/faq/search, the KB's dev queries
    admin        5 %  the FAQ admin API: 4 in 5 reads (a page of FAQs, one FAQ by id), 1 in 5 a new FAQ (a write
                      whose id is recorded, so an experiment can check afterwards that no acknowledged write is lost)

Every user sends at `LOAD_USER_RATE` requests/s (`constant_throughput`), so `users x rate` is the offered rate.
Each request is one JSON line in `LOAD_RECORDS` (when set): [start (epoch s), kind, status (0: transport
error), latency ms, degraded (a chat answer whose `degraded` list is not empty), FAQ id of an acknowledged write].
Settings (environment): LOAD_API_KEY (scopes chat + admin), LOAD_RECORDS, LOAD_USER_RATE, LOAD_TIMEOUT_S.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import uuid

from locust import constant_throughput, events, task
from locust.contrib.fasthttp import FastHttpUser

from bench.load_records import Record, RecordWriter, kb_ids, messages, queries

API_KEY = os.environ.get("LOAD_API_KEY", "")
RATE = float(os.environ.get("LOAD_USER_RATE", "0.5"))
TIMEOUT_S = float(os.environ.get("LOAD_TIMEOUT_S", "10"))
WRITER = RecordWriter(os.environ.get("LOAD_RECORDS") or None)
MESSAGES = messages()
QUERIES = queries()
KB_IDS = kb_ids()
TURNS_PER_SESSION = 4
_write_ids = itertools.count()
_run = uuid.uuid4().hex[:8]


@events.request.add_listener
def _record(
    request_type, name, response_time, response_length, response, context, exception, start_time, **kw
):
    status = 0 if exception is not None and not getattr(response, "status_code", 0) else response.status_code
    if exception is not None and status and 200 <= status < 300:
        status = 0  # a 2xx whose body could not be read
    degraded, faq_id = False, None
    if status == 200 and name == "chat":
        try:
            degraded = bool(json.loads(response.text).get("degraded"))
        except (ValueError, AttributeError):
            status = 0
    if status == 201 and name == "admin_create":
        faq_id = context.get("faq_id")
    WRITER.write(Record(start_time, name, status, round(response_time, 2), degraded, faq_id))


@events.quitting.add_listener
def _close(environment, **kw):
    WRITER.close()


class Customer(FastHttpUser):
    """One client of the gateway: chats mostly, searches FAQs, now and then an admin call."""

    wait_time = constant_throughput(RATE)
    network_timeout = TIMEOUT_S
    connection_timeout = min(TIMEOUT_S, 5.0)

    def on_start(self) -> None:
        self.headers = {"x-api-key": API_KEY, "content-type": "application/json"}
        self.admin_headers = {"authorization": f"Bearer {API_KEY}", "content-type": "application/json"}
        self.rng = random.Random()
        self.session, self.turns = self._new_session(), 0

    def _new_session(self) -> str:
        return f"load-{_run}-{uuid.uuid4().hex[:12]}"

    def _post(self, path: str, body: dict, name: str, headers: dict, **kw):
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        with self.client.post(path, data=data, headers=headers, name=name, catch_response=True, **kw) as r:
            r.success() if 200 <= (r.status_code or 0) < 300 else r.failure(f"HTTP {r.status_code}")

    @task(80)
    def chat(self) -> None:
        if self.turns >= TURNS_PER_SESSION:
            self.session, self.turns = self._new_session(), 0
        self.turns += 1
        body = {"session_id": self.session, "text": self.rng.choice(MESSAGES)}
        self._post("/v1/chat", body, "chat", self.headers)

    @task(15)
    def faq_search(self) -> None:
        self._post(
            "/v1/faq/search", {"text": self.rng.choice(QUERIES), "top_k": 5}, "faq_search", self.headers
        )

    @task(5)
    def admin(self) -> None:
        if self.rng.random() < 0.2:
            faq_id = f"load-{_run}-{next(_write_ids)}"
            body = {
                "faq_id": faq_id,
                "question": f"压测写入的问题 {faq_id}",
                "answer": "这是负载测试写入的答案，用来检查写入是否丢失。",
                "category": "其他/闲聊",
            }
            self._post(
                "/admin/faq/faqs", body, "admin_create", self.admin_headers, context={"faq_id": faq_id}
            )
        elif self.rng.random() < 0.5:
            self.client.get("/admin/faq/faqs?limit=20", headers=self.admin_headers, name="admin_read")
        else:
            faq_id = self.rng.choice(KB_IDS)
            self.client.get(f"/admin/faq/faqs/{faq_id}", headers=self.admin_headers, name="admin_read")
