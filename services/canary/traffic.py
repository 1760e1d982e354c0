"""Continuous client traffic for the canary demo: every request counted, every failure counted and shown.

    traffic = Traffic("http://127.0.0.1:8000", api_key, texts, clients=4, progress=print).start()
    ...
    traffic.stop(); traffic.stats()   # {"total", "failed", "by_status", "versions", "errors", "rate"}

Half the clients hold /v1/chat conversations (a new session id every three turns, so stickiness is exercised),
the other half send /v1/intent batches of four texts (no session: each batch draws its side of the split).
A failure is any answer other than 200 (429 and 503 included) or no answer at all. `versions` counts, per intent
version, the client answers it gave (from `model_versions.intent` / `model_version`), so the demo can show that
a candidate caught in shadow answered no client.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections import Counter
from collections.abc import Callable

import httpx


class Traffic:
    def __init__(
        self,
        url: str,
        api_key: str,
        texts: list[str],
        clients: int = 4,
        progress: Callable[[str], None] = print,
        progress_every_s: float = 15.0,
        timeout_s: float = 10.0,
    ):
        if not texts:
            raise ValueError("no texts to send")
        self.url, self.texts, self.clients = url.rstrip("/"), texts, clients
        self.headers = {"X-API-Key": api_key}
        self.progress, self.progress_every_s, self.timeout_s = progress, progress_every_s, timeout_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._sessions = itertools.count()
        self.total = 0
        self.by_status: Counter = Counter()
        self.versions: Counter = Counter()
        self.errors: Counter = Counter()  # first words of failures, to say what went wrong
        self.started = 0.0

    def start(self) -> Traffic:
        self.started = time.monotonic()
        for i in range(self.clients):
            target = self._chat if i % 2 == 0 else self._intent
            self._threads.append(threading.Thread(target=target, args=(i,), name=f"traffic-{i}", daemon=True))
        self._threads.append(threading.Thread(target=self._report, name="traffic-progress", daemon=True))
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout_s + 5)

    def stats(self) -> dict:
        with self._lock:
            failed = sum(n for status, n in self.by_status.items() if status != 200)
            elapsed = max(1e-9, time.monotonic() - self.started)
            return {
                "total": self.total,
                "failed": failed,
                "by_status": {str(k): v for k, v in self.by_status.items()},
                "versions": dict(self.versions),
                "errors": dict(self.errors.most_common(5)),
                "rate": round(self.total / elapsed, 1),
            }

    def _record(self, status: int, version: str | None, error: str | None = None) -> None:
        with self._lock:
            self.total += 1
            self.by_status[status] += 1
            if version is not None:
                self.versions[version] += 1
            if error:
                self.errors[error] += 1

    def _send(self, client: httpx.Client, path: str, body: dict, version_of) -> None:
        try:
            r = client.post(path, json=body)
        except httpx.HTTPError as e:
            self._record(0, None, f"{type(e).__name__}")
            return
        if r.status_code != 200:
            self._record(r.status_code, None, r.text[:120])
            return
        try:
            version = version_of(r.json())
        except (ValueError, KeyError, TypeError):
            self._record(-1, None, f"unreadable 200 body: {r.text[:80]}")
            return
        self._record(200, version)

    def _chat(self, n: int) -> None:
        rng = random.Random(n)
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=self.timeout_s) as client:
            while not self._stop.is_set():
                session = f"demo-{n}-{next(self._sessions)}"
                for _turn in range(3):
                    if self._stop.is_set():
                        break
                    body = {"session_id": session, "text": rng.choice(self.texts)}
                    self._send(
                        client, "/v1/chat", body, lambda b: (b.get("model_versions") or {}).get("intent")
                    )

    def _intent(self, n: int) -> None:
        rng = random.Random(1000 + n)
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=self.timeout_s) as client:
            while not self._stop.is_set():
                body = {"text": rng.sample(self.texts, 4)}
                self._send(client, "/v1/intent", body, lambda b: b["model_version"])

    def _report(self) -> None:
        while not self._stop.wait(self.progress_every_s):
            s = self.stats()
            self.progress(
                f"   traffic: {s['total']} requests ({s['rate']}/s), {s['failed']} failed, intent versions "
                f"answering {dict(sorted(s['versions'].items()))}"
                + (f", errors {s['errors']}" if s["errors"] else "")
            )
