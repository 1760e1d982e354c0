"""Calls to the inference workers over the Open Inference Protocol (KServe V2 REST), with one pooled client.

    pool = WorkerPool(settings, metrics)
    result = await pool.infer("intent", ["我的快递到哪了"], version="3")   # InferResult
    await pool.refresh()                                                   # probes + model metadata

Roles are the gateway's names for what it needs (`intent`, `sentiment`, `faq`); each maps to a model name on
the workers and to one or more replica base URLs (`GatewaySettings.workers`).

- One pooled `httpx.AsyncClient` per role (keep-alive, up to `max_connections` each) for all its replicas:
  httpcore scans every pooled connection on each request, so three smaller pools cost a third of one big one
  (measured: the scan was ~15 % of the gateway's CPU at concurrency 8). `call_timeout_s` bounds one call to one
  replica, `connect_timeout_s` its connect.
- Inference is idempotent, so a call that fails with a connect error, a timeout or a 5xx is retried on ANOTHER
  replica (up to `retries` times; `kefu_gateway_upstream_retries_total`). A 4xx is the request's fault: no
  retry, it is raised as is (`UpstreamError.status`). A call with no answer after `hedge_after_s` is also sent
  to the next replica, within a budget (a hedge, `clients/hedging.py`; counted as a retry): the first answer
  wins, so a hung replica costs `hedge_after_s`, not `call_timeout_s`.
- Each replica of each role has a `CircuitBreaker`; an open breaker skips the replica without a call. When no
  replica may be called, the call fails at once with outcome `circuit_open`.
- The models' input limits are honoured: lists longer than the model's `max_batch_size` (from the worker's
  metadata) are split into chunks sent concurrently; the worker truncates each text to `max_seq_len` tokens.
- `refresh()` probes `GET /v2/models/{model}/ready` on every replica (`kefu_gateway_upstream_up`) and reads
  `GET /v2/models/{model}` (serving versions, max_batch_size, max_seq_len, labels, embedding dim) into `info`.

Metric label `upstream`: the role's upstream name (`intent`, `sentiment`, `faq_embed`) for call durations and
retries; `<upstream>@<host:port>` for the per-replica breaker state and readiness.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import numpy as np

from services.common.logthrottle import LogThrottle
from services.gateway.clients.breaker import BreakerState, CircuitBreaker
from services.gateway.clients.hedging import Failed, HedgeBudget, first_good
from services.gateway.metrics import GatewayMetrics
from services.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)
T = TypeVar("T")

try:  # httpcore imports sniffio (optional) afresh for every lock it makes; absent, each attempt scans sys.path
    import sniffio  # noqa: F401
except ImportError:  # a None entry makes the failed import instant; httpcore then assumes asyncio (true here)
    sys.modules.setdefault("sniffio", None)  # type: ignore[arg-type]

ROLES = ("intent", "sentiment", "faq")
UPSTREAM_NAMES = {"intent": "intent", "sentiment": "sentiment", "faq": "faq_embed"}
INPUT_NAME = "text"


class UpstreamError(Exception):
    """A model call that produced no answer. `outcome`: error / timeout / circuit_open; `status`: the worker's
    HTTP status when it answered (4xx are not retried)."""

    def __init__(self, upstream: str, outcome: str, message: str, status: int | None = None):
        super().__init__(f"{upstream}: {message}")
        self.upstream, self.outcome, self.message, self.status = upstream, outcome, message, status


@dataclass
class ModelInfo:
    """What the workers say about a model (`GET /v2/models/{model}`)."""

    model: str
    versions: list[str] = field(default_factory=list)
    max_batch_size: int | None = None
    max_seq_len: int | None = None
    labels: list[str] | None = None
    task: str | None = None
    dim: int | None = None

    @property
    def latest(self) -> str | None:
        """The version an unversioned call is answered by (the highest serving)."""
        numbers = [v for v in self.versions if v.isdigit()]
        return (
            str(max(int(v) for v in numbers)) if numbers else (self.versions[-1] if self.versions else None)
        )


@dataclass
class InferResult:
    model_version: str
    outputs: dict[str, Any]  # "label": list[str]; "probs" / "embedding": float32 ndarray [n, k]


@dataclass
class Replica:
    url: str
    label: str
    breaker: CircuitBreaker
    up: bool = True  # last readiness probe; optimistic until the first probe


def _host(url: str) -> str:
    parts = urlsplit(url)
    return parts.netloc or url


def decode_outputs(payload: dict) -> tuple[str, dict[str, Any]]:
    """`model_version` and the outputs of a V2 response, BYTES as lists, FP32 as float32 arrays [n, k]."""
    outputs: dict[str, Any] = {}
    for out in payload.get("outputs") or []:
        if out.get("datatype") == "BYTES":
            outputs[out["name"]] = list(out["data"])
        else:
            outputs[out["name"]] = np.asarray(out["data"], np.float32).reshape(out["shape"])
    return str(payload.get("model_version") or ""), outputs


def merge(results: list[InferResult]) -> InferResult:
    """Chunks back into one result, in order."""
    if len(results) == 1:
        return results[0]
    outputs: dict[str, Any] = {}
    for name, first in results[0].outputs.items():
        if isinstance(first, list):
            outputs[name] = [x for r in results for x in r.outputs[name]]
        else:
            outputs[name] = np.concatenate([r.outputs[name] for r in results])
    return InferResult(results[0].model_version, outputs)


class WorkerPool:
    def __init__(
        self,
        settings: GatewaySettings,
        metrics: GatewayMetrics,
        transport: httpx.AsyncBaseTransport | None = None,
        clock=time.monotonic,
    ):
        self.settings, self.metrics = settings, metrics
        self.transport = transport  # tests: a fake; the blocking WorkerEmbedder reuses it when it can
        self.models = {
            "intent": settings.intent_model,
            "sentiment": settings.sentiment_model,
            "faq": settings.faq_model,
        }
        self.clients = {role: self._new_client() for role in ROLES}
        self.replicas: dict[str, list[Replica]] = {}
        for role in ROLES:
            name = UPSTREAM_NAMES[role]
            self.replicas[role] = [self._replica(name, url, clock) for url in settings.workers[role]]
        self.info: dict[str, ModelInfo] = {}
        self._turn = {role: itertools.count() for role in ROLES}
        self._hedge_budget = HedgeBudget(settings.hedge_budget_ratio)
        self._refresh_lock = asyncio.Lock()
        self._failure_log = LogThrottle(
            log, settings.log_repeat_interval_s, clock
        )  # one line per replica per interval

    def _new_client(self) -> httpx.AsyncClient:
        s = self.settings
        return httpx.AsyncClient(
            timeout=httpx.Timeout(s.call_timeout_s, connect=s.connect_timeout_s),
            limits=httpx.Limits(
                max_connections=s.max_connections, max_keepalive_connections=s.max_connections
            ),
            transport=self.transport,
        )

    async def start(self) -> None:
        """(Re)open the connection pool: an app whose lifespan ran before starts again (tests do that)."""
        for role, client in self.clients.items():
            if client.is_closed:
                self.clients[role] = self._new_client()

    def _replica(self, name: str, url: str, clock) -> Replica:
        label = f"{name}@{_host(url)}"
        gauge = self.metrics.circuit_state.labels(label)
        breaker = CircuitBreaker(
            self.settings.breaker_failures,
            self.settings.breaker_reset_s,
            clock=clock,
            on_change=lambda state: gauge.set(int(state)),
            max_reset_timeout_s=max(self.settings.breaker_reset_max_s, self.settings.breaker_reset_s),
        )
        self.metrics.upstream_up.labels(label).set(1)
        return Replica(url, label, breaker)

    # ── inference ───────────────────────────────────────────────────────────────────────────────────

    def batch_size(self, role: str) -> int:
        info = self.info.get(role)
        return (
            info.max_batch_size if info and info.max_batch_size else None
        ) or self.settings.default_batch_size

    async def infer(self, role: str, texts: list[str], version: str | None = None) -> InferResult:
        """Every text through `role`'s model (at `version`, or the latest serving), in chunks of at most the
        model's max_batch_size sent concurrently. Raises `UpstreamError`."""
        size = self.batch_size(role)
        chunks = [texts[i : i + size] for i in range(0, len(texts), size)]
        results = await asyncio.gather(*(self._call(role, chunk, version) for chunk in chunks))
        return merge(list(results))

    def _order(self, role: str) -> list[Replica]:
        """Replicas to try, round-robin, the ones whose last probe failed last."""
        replicas = self.replicas[role]
        start = next(self._turn[role]) % len(replicas)
        rotated = replicas[start:] + replicas[:start]
        return sorted(rotated, key=lambda r: not r.up)

    async def _call(self, role: str, texts: list[str], version: str | None) -> InferResult:
        upstream = UPSTREAM_NAMES[role]
        model = self.models[role]
        path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
        body = json.dumps(
            {"inputs": [{"name": INPUT_NAME, "shape": [len(texts)], "datatype": "BYTES", "data": texts}]},
            ensure_ascii=False,
        ).encode("utf-8")

        async def attempt(replica: Replica, extra: bool) -> InferResult:
            if extra:
                self.metrics.upstream_retries.labels(upstream).inc()
            started = time.perf_counter()
            try:
                response = await self.clients[role].post(
                    replica.url + path, content=body, headers={"content-type": "application/json"}
                )
            except httpx.TimeoutException as e:
                failed = UpstreamError(upstream, "timeout", f"{replica.url} timed out ({type(e).__name__})")
            except httpx.HTTPError as e:
                failed = UpstreamError(upstream, "error", f"{replica.url} unreachable ({type(e).__name__})")
            else:
                if response.status_code == 200:
                    replica.breaker.record_success()
                    self._observe(upstream, "ok", started)
                    try:
                        model_version, outputs = decode_outputs(response.json())
                    except (ValueError, KeyError, TypeError) as e:
                        raise UpstreamError(upstream, "error", f"malformed V2 response: {e}") from e
                    return InferResult(model_version or (version or ""), outputs)
                message = _error_text(response)
                if response.status_code < 500:  # the request's fault (or a deliberate refusal): no retry
                    replica.breaker.record_success()
                    self._observe(upstream, "error", started)
                    raise UpstreamError(upstream, "error", message, response.status_code)
                failed = UpstreamError(upstream, "error", message, response.status_code)
            replica.breaker.record_failure()
            self._observe(upstream, failed.outcome, started)
            self._failure_log.warning(
                replica.label, "%s call to %s failed: %s", upstream, replica.label, failed.message
            )
            raise Failed(failed)

        try:
            return await self.first_good(role, attempt)
        except Failed as e:
            raise e.error from None
        except LookupError:
            self.metrics.upstream_duration.labels(upstream, "circuit_open").observe(0)
            raise UpstreamError(upstream, "circuit_open", "every replica's circuit breaker is open") from None

    async def first_good(
        self, role: str, attempt: Callable[[Replica, bool], Awaitable[T]], *, breakers: bool = True
    ) -> T:
        """`attempt` on `role`'s replicas in order (round robin; with `breakers`, only those whose breaker is
        closed or due a trial), retried or hedged on the next one (clients/hedging.py), at most 1 + `retries`
        calls."""
        order = self._order(role)
        replicas = (r for r in order if r.breaker.allow()) if breakers else iter(order)
        return await first_good(
            replicas,
            attempt,
            attempts=self.settings.retries + 1,
            hedge_after_s=self.settings.hedge_after_s,
            budget=self._hedge_budget,
        )

    def _observe(self, upstream: str, outcome: str, started: float) -> None:
        self.metrics.upstream_duration.labels(upstream, outcome).observe(time.perf_counter() - started)

    # ── health and metadata ─────────────────────────────────────────────────────────────────────────

    def usable(self, role: str) -> bool:
        """At least one replica passed its last probe and is not behind an open breaker."""
        return any(r.up and r.breaker.state is not BreakerState.OPEN for r in self.replicas[role])

    def status(self) -> dict[str, dict[str, Any]]:
        return {
            role: {
                "model": self.models[role],
                "version": self.info[role].latest if role in self.info else None,
                "replicas": [
                    {"upstream": r.label, "up": r.up, "circuit": r.breaker.state.name.lower()} for r in reps
                ],
            }
            for role, reps in self.replicas.items()
        }

    async def refresh(self) -> dict[str, ModelInfo]:
        """Probe every replica and re-read each model's metadata from a replica that is up."""
        async with self._refresh_lock:
            await asyncio.gather(*(self._probe(role, r) for role in ROLES for r in self.replicas[role]))
            for role in ROLES:
                for replica in self.replicas[role]:
                    if not replica.up:
                        continue
                    try:
                        self.info[role] = await self._metadata(role, replica)
                        break
                    except (httpx.HTTPError, ValueError, KeyError, TypeError) as e:
                        self._failure_log.warning(
                            f"metadata {replica.label}",
                            "metadata of %s from %s: %s",
                            self.models[role],
                            replica.label,
                            e,
                        )
            return dict(self.info)

    async def _probe(self, role: str, replica: Replica) -> None:
        try:
            response = await self.clients[role].get(f"{replica.url}/v2/models/{self.models[role]}/ready")
            up = response.status_code == 200
        except httpx.HTTPError:
            up = False
        if up != replica.up:
            log.warning("%s is %s", replica.label, "up" if up else "DOWN")
        replica.up = up
        self.metrics.upstream_up.labels(replica.label).set(1 if up else 0)

    async def _metadata(self, role: str, replica: Replica) -> ModelInfo:
        response = await self.clients[role].get(f"{replica.url}/v2/models/{self.models[role]}")
        response.raise_for_status()
        meta = response.json()
        params = meta.get("parameters") or {}
        dim = None
        for out in meta.get("outputs") or []:
            if out.get("name") == "embedding" and out.get("shape"):
                dim = int(out["shape"][-1])
        return ModelInfo(
            model=self.models[role],
            versions=[str(v) for v in meta.get("versions") or []],
            max_batch_size=params.get("max_batch_size"),
            max_seq_len=params.get("max_seq_len"),
            labels=params.get("labels"),
            task=params.get("task"),
            dim=dim,
        )

    async def close(self) -> None:
        for client in self.clients.values():
            await client.aclose()


def _error_text(response: httpx.Response) -> str:
    try:
        detail = response.json().get("error")
    except ValueError:
        detail = None
    return f"HTTP {response.status_code}" + (f": {detail}" if detail else "")
