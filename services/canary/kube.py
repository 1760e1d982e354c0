"""Rollouts in a cluster, through the official `kubernetes` client: the routing ConfigMap and the Deployments.

- Routing: the ConfigMap `configmap` holds the routing file under `key` (default `routing.yaml`); the gateway
  mounts it and its watcher picks up the kubelet's symlink swap. Each change is a read-modify-write guarded by
  the ConfigMap's `resourceVersion` (a concurrent writer makes the API answer 409 and the change is redone).
- Canary Deployment (optional): `start` sets its container env `KEFU_CANARY_MODEL` / `KEFU_CANARY_VERSION`, the
  annotation `kefu.io/canary` = `<model>=<version>` (on the Deployment and its pod template, so pods roll) and
  `replicas`, then waits up to `wait_ready_s` for the pods to be ready, before any traffic is routed to it.
  `rollback` and `promote` scale it to 0 and remove the annotation after traffic has left it.
- Stable Deployment (optional): `promote` annotates it (and its pod template) with `kefu.io/stable-<model>` =
  version before stable traffic is routed to that version.

Patches are JSON merge patches (`application/merge-patch+json`): the container list is sent whole, as read.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from kubernetes import client
from kubernetes.client.rest import ApiException

from services.canary.backends import Change, RolloutBackend, RolloutError
from services.canary.routing import ROUTING_KEY, RoutingConfig, RoutingError

CANARY_ANNOTATION = "kefu.io/canary"
STABLE_ANNOTATION = "kefu.io/stable-{model}"
CANARY_MODEL_ENV = "KEFU_CANARY_MODEL"
CANARY_VERSION_ENV = "KEFU_CANARY_VERSION"
MERGE_PATCH = "application/merge-patch+json"


class KubernetesBackend(RolloutBackend):
    """Routing in a ConfigMap; optional canary / stable Deployments in the same namespace."""

    def __init__(
        self,
        api_client: client.ApiClient,
        namespace: str,
        configmap: str,
        key: str = ROUTING_KEY,
        canary_deployment: str | None = None,
        stable_deployment: str | None = None,
        container: str | None = None,
        canary_replicas: int = 1,
        wait_ready_s: float = 0,
        progress: Callable[[str], None] | None = None,
        retries: int = 5,
    ):
        self.core = client.CoreV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.namespace, self.configmap, self.key = namespace, configmap, key
        self.canary_deployment, self.stable_deployment = canary_deployment, stable_deployment
        self.container = container
        self.canary_replicas = canary_replicas
        self.wait_ready_s = wait_ready_s
        self.progress = progress or (lambda _msg: None)
        self.retries = retries
        self.target = f"ConfigMap {namespace}/{configmap} key {key}"

    # ---- routing ConfigMap -------------------------------------------------------------------------------------

    def _read_cm(self):
        try:
            cm = self.core.read_namespaced_config_map(self.configmap, self.namespace)
        except ApiException as e:
            raise RoutingError(f"{self.target}: cannot read the ConfigMap: {_reason(e)}") from e
        data = cm.data or {}
        if self.key not in data:
            raise RoutingError(f"{self.target}: the ConfigMap has no key {self.key!r} (keys: {sorted(data)})")
        return cm, RoutingConfig.from_yaml(data[self.key], self.target)

    def read(self) -> RoutingConfig:
        return self._read_cm()[1]

    def _update(self, change: Change) -> RoutingConfig:
        for _attempt in range(self.retries):
            cm, config = self._read_cm()
            new = change(config)
            body: dict = {"data": {self.key: new.to_yaml()}}
            if cm.metadata is not None and cm.metadata.resource_version:
                body["metadata"] = {"resourceVersion": cm.metadata.resource_version}
            try:
                self.core.patch_namespaced_config_map(
                    self.configmap, self.namespace, body, _content_type=MERGE_PATCH
                )
            except ApiException as e:
                if e.status == 409:  # someone else changed it since our read: redo the change on theirs
                    continue
                raise RolloutError(f"{self.target}: cannot update the ConfigMap: {_reason(e)}") from e
            return new
        raise RolloutError(f"{self.target}: still conflicting after {self.retries} attempts")

    # ---- deployments ------------------------------------------------------------------------------------------

    def _read_deployment(self, name: str):
        try:
            return self.apps.read_namespaced_deployment(name, self.namespace)
        except ApiException as e:
            raise RolloutError(f"Deployment {self.namespace}/{name}: cannot read it: {_reason(e)}") from e

    def _patch_deployment(self, name: str, body: dict) -> None:
        try:
            self.apps.patch_namespaced_deployment(name, self.namespace, body, _content_type=MERGE_PATCH)
        except ApiException as e:
            raise RolloutError(f"Deployment {self.namespace}/{name}: cannot patch it: {_reason(e)}") from e

    def _containers_with_env(self, deployment, env: dict[str, str]) -> list[dict]:
        containers = self.apps.api_client.sanitize_for_serialization(deployment.spec.template.spec.containers)
        if not containers:
            raise RolloutError(f"Deployment {deployment.metadata.name} has no containers")
        names = [c.get("name") for c in containers]
        target = self.container or names[0]
        if target not in names:
            raise RolloutError(
                f"Deployment {deployment.metadata.name} has no container {target!r} (has {names})"
            )
        for c in containers:
            if c.get("name") == target:
                kept = [e for e in c.get("env") or [] if e.get("name") not in env]
                c["env"] = kept + [{"name": k, "value": v} for k, v in env.items()]
        return containers

    def _deploy_canary(self, model: str, version: str) -> None:
        if self.canary_deployment is None:
            return
        dep = self._read_deployment(self.canary_deployment)
        busy = (dep.metadata.annotations or {}).get(CANARY_ANNOTATION, "")
        if busy and busy.split("=", 1)[0] != model and (dep.spec.replicas or 0) > 0:
            raise RolloutError(
                f"canary Deployment {self.canary_deployment} is serving the rollout {busy}: finish it first"
            )
        containers = self._containers_with_env(dep, {CANARY_MODEL_ENV: model, CANARY_VERSION_ENV: version})
        annotation = {CANARY_ANNOTATION: f"{model}={version}"}
        self._patch_deployment(
            self.canary_deployment,
            {
                "metadata": {"annotations": annotation},
                "spec": {
                    "replicas": self.canary_replicas,
                    "template": {"metadata": {"annotations": annotation}, "spec": {"containers": containers}},
                },
            },
        )
        self.progress(f"canary Deployment {self.canary_deployment}: {model} version {version}, "
                      f"{self.canary_replicas} replica(s)")  # fmt: skip
        self._wait_ready(self.canary_deployment, self.canary_replicas)

    def _wait_ready(self, name: str, replicas: int) -> None:
        if self.wait_ready_s <= 0:
            return
        deadline = time.monotonic() + self.wait_ready_s
        while True:
            status = self._read_deployment(name).status
            ready = (status.ready_replicas or 0) if status is not None else 0
            if ready >= replicas:
                self.progress(f"Deployment {name}: {ready}/{replicas} ready")
                return
            if time.monotonic() >= deadline:
                raise RolloutError(
                    f"Deployment {self.namespace}/{name}: {ready}/{replicas} replicas ready after "
                    f"{self.wait_ready_s:g} s; no traffic was routed to it"
                )
            self.progress(f"Deployment {name}: waiting for readiness ({ready}/{replicas})")
            time.sleep(min(2.0, max(0.05, deadline - time.monotonic())))

    def _promote_stable(self, model: str, version: str) -> None:
        if self.stable_deployment is None:
            return
        self._read_deployment(self.stable_deployment)  # a clear error if it is missing
        annotation = {STABLE_ANNOTATION.format(model=model): version}
        self._patch_deployment(
            self.stable_deployment,
            {
                "metadata": {"annotations": annotation},
                "spec": {"template": {"metadata": {"annotations": annotation}}},
            },
        )
        self.progress(f"stable Deployment {self.stable_deployment}: {model} version {version}")

    def _retire_canary(self, model: str) -> None:
        if self.canary_deployment is None:
            return
        dep = self._read_deployment(self.canary_deployment)
        current = (dep.metadata.annotations or {}).get(CANARY_ANNOTATION, "")
        if current and not current.startswith(f"{model}="):
            return  # the canary Deployment serves another model's rollout: leave it alone
        removal = {CANARY_ANNOTATION: None}
        self._patch_deployment(
            self.canary_deployment,
            {"metadata": {"annotations": removal}, "spec": {"replicas": 0, "template": {"metadata": {"annotations": removal}}}},
        )  # fmt: skip
        self.progress(f"canary Deployment {self.canary_deployment}: scaled to 0")


def _reason(e: ApiException) -> str:
    return f"HTTP {e.status} {e.reason}" + (f": {e.body[:300]}" if e.body else "")


def api_client_from_config(kubeconfig: str | None = None, context: str | None = None) -> client.ApiClient:
    """In-cluster service account when running in a pod, else the kubeconfig (`$KUBECONFIG` or ~/.kube/config)."""
    from kubernetes import config

    if kubeconfig is None:
        try:
            config.load_incluster_config()
            return client.ApiClient()
        except config.ConfigException:
            pass
    try:
        configuration = client.Configuration()
        config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)
    except (config.ConfigException, OSError) as e:
        raise RolloutError(f"no Kubernetes configuration: {e}") from e
    return client.ApiClient(configuration)
