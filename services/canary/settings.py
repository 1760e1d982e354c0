"""Canary tool settings: every field documented, each a KEFU_CANARY_* variable and a CLI flag default."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.canary.policy import DEFAULT_POLICY


class CanarySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KEFU_CANARY_", extra="forbid")

    routing_file: Path | None = Field(None, description="routing file of the local stack (LocalBackend)")
    prometheus: str | None = Field(
        None, description="Prometheus base URL for the online gates, e.g. http://127.0.0.1:9090"
    )
    prometheus_timeout_s: float = Field(10.0, gt=0, description="timeout of one Prometheus query")
    policy: Path = Field(DEFAULT_POLICY, description="rollout policy YAML (steps, bake, gates)")
    repository: Path | None = Field(
        None, description="model repository holding <model>/<version>/evaluation.json for the offline gate"
    )
    namespace: str = Field("default", description="Kubernetes namespace of the ConfigMap and Deployments")
    configmap: str = Field("kefu-routing", description="ConfigMap holding the routing file")
    configmap_key: str = Field("routing.yaml", description="key of the routing file in the ConfigMap")
    canary_deployment: str | None = Field(
        None, description="Deployment serving canary versions (scaled up/down)"
    )
    stable_deployment: str | None = Field(
        None, description="Deployment serving stable versions (told on promote)"
    )
    container: str | None = Field(None, description="container receiving the canary env (default: the first)")
    canary_replicas: int = Field(1, ge=1, description="canary Deployment replicas during a rollout")
    wait_ready_s: float = Field(300, ge=0, description="how long start waits for canary pods to be ready")
    kubeconfig: str | None = Field(
        None, description="kubeconfig file (default: in-cluster, then ~/.kube/config)"
    )
    context: str | None = Field(None, description="kubeconfig context")
