"""Worker settings: one object, every field documented, each overridable by a KEFU_WORKER_* variable."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KEFU_WORKER_", extra="forbid")

    repository: Path = Field(Path("model_repository"), description="model repository root")
    models: str = Field(
        "", description="comma-separated models to load at start; empty = every model in the repository"
    )
    host: str = Field("127.0.0.1", description="bind address")
    port: int = Field(8001, description="bind port")
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
    max_request_bytes: int = Field(1 << 20, ge=1024, description="largest accepted request body")
    warmup: bool = Field(True, description="run every length bucket once before a version takes traffic")
    engine_check_interval_s: float = Field(
        2.0,
        ge=0,
        description="how often engine processes are checked; a dead one makes readiness fail and its version is "
        "reloaded (a fresh engine, warmed) while the other versions keep serving; 0 = never",
    )

    @property
    def model_names(self) -> list[str]:
        return [m.strip() for m in self.models.split(",") if m.strip()]
