"""Worker settings: one object, every field documented, each overridable by a KEFU_WORKER_* variable."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.runtime.repository import MODEL_NAME


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KEFU_WORKER_", extra="forbid", hide_input_in_errors=True)

    repository: Path = Field(Path("model_repository"), description="model repository root")
    models: str = Field(
        "", description="comma-separated models to load at start; empty = every model in the repository"
    )
    host: str = Field("127.0.0.1", description="bind address")
    port: int = Field(
        8001, ge=0, le=65535, description="bind port of the public API (Open Inference Protocol)"
    )
    internal_port: int = Field(
        9001,
        ge=0,
        le=65535,
        description="bind port (same host) of the internal API: GET /metrics and /v2/health/live|ready, for "
        "Prometheus and probes; the public port has no /metrics",
    )
    docs_enabled: bool = Field(False, description="serve /docs and /openapi.json on the public port")
    model_control_mode: Literal["none", "explicit"] = Field(
        "none",
        description="none: POST /v2/repository/models/{m}/load|unload answer 403; explicit: they take an "
        "`Authorization: Bearer <model_control_token>` (Triton's --model-control-mode)",
    )
    model_control_token: SecretStr | None = Field(
        None, description="bearer token of the load / unload routes; required (16+ characters) when explicit"
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "warning",
        description="log level of the worker and uvicorn; `info` writes one access line per request (method, "
        "route, status, ms: no query string, no headers)",
    )
    processes: int = Field(
        1,
        ge=1,
        description="HTTP server processes sharing the port; each has its own batchers and engine processes",
    )
    backend: Literal["paddle", "onnxruntime", "fake"] = Field("paddle", description="inference engine")
    engine_process: bool = Field(
        True,
        description="run each Paddle model version in its own engine process (predictor.run holds the GIL: in the "
        "server process it would stop the event loop from admitting requests while a batch computes)",
    )
    max_batch_size: int = Field(
        0, ge=0, description="cap on texts per batch; 0 = the model's config.yaml value"
    )
    max_queue_delay_ms: float = Field(
        1.0, ge=0, description="longest a batch waits for more texts, timed from the first waiting text"
    )
    adaptive_queue_delay: bool = Field(
        True, description="a lone text on an idle engine skips the queue delay unless traffic is concurrent"
    )
    max_batch_tokens: int = Field(4096, ge=1, description="batch size x padded length budget per batch")
    queue_capacity: int = Field(512, ge=1, description="texts waiting per model version before 429")
    request_timeout_ms: int = Field(10000, ge=1, description="deadline of a request inside the worker")
    seq_bucket: int = Field(
        8, ge=1, description="pad sequence lengths up to a multiple of this (fewer shapes)"
    )
    max_body_bytes: int = Field(
        1 << 20,
        ge=1024,
        description="largest request body: 413 from Content-Length before reading, or as soon as a streamed "
        "body passes it",
    )
    max_header_bytes: int = Field(
        16384, ge=1024, description="largest request line + headers: 431 above, before they are buffered"
    )
    warmup: bool = Field(True, description="run every length bucket once before a version takes traffic")
    engine_check_interval_s: float = Field(
        2.0,
        ge=0,
        description="how often engine processes are checked; a dead one makes readiness fail and its version is "
        "reloaded (a fresh engine, warmed) while the other versions keep serving; 0 = never",
    )
    engine_timeout_s: float = Field(
        5.0,
        gt=0,
        description="longest one batch may take in an engine process; beyond, the engine counts as hung: it is "
        "killed, its requests answer 503 and the watchdog starts a fresh one",
    )
    ready_cache_s: float = Field(
        1.0,
        ge=0,
        description="how long a model's live readiness probe (a tiny input through the engine, skipped while "
        "batches succeed) is reused",
    )
    ready_probe_timeout_s: float = Field(
        0.5, gt=0, description="a readiness probe the engine does not answer within this fails readiness"
    )

    @field_validator("models")
    @classmethod
    def _model_names_are_plain(cls, value: str) -> str:
        bad = [m.strip() for m in value.split(",") if m.strip() and not MODEL_NAME.fullmatch(m.strip())]
        if bad:
            raise ValueError(f"invalid model name(s) {bad}: letters, digits, '.', '_' and '-' only")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> WorkerSettings:
        if self.internal_port and self.internal_port == self.port:
            raise ValueError(f"internal_port must differ from port ({self.port})")
        if self.model_control_mode == "explicit":
            token = self.model_control_token.get_secret_value() if self.model_control_token else ""
            if len(token) < 16:
                raise ValueError("model_control_mode=explicit needs a model_control_token of 16+ characters")
        return self

    @property
    def model_names(self) -> list[str]:
        return [m.strip() for m in self.models.split(",") if m.strip()]
