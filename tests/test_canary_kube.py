"""The Kubernetes backend against the kmock API emulator on loopback, driven by the real `kubernetes` client:
start / promote / rollback change the routing ConfigMap and the Deployments as expected; the CLI does too."""

from __future__ import annotations

import asyncio

import kmock
import pytest
import pytest_asyncio
import yaml
from kubernetes import client

from services.canary.backends import RolloutError
from services.canary.cli import main
from services.canary.kube import CANARY_ANNOTATION, KubernetesBackend
from services.canary.routing import RoutingConfig, RoutingError
from tests.test_canary_fakes import FakePrometheus, broken_scenario, scenario

pytestmark = [pytest.mark.slow, pytest.mark.asyncio]

NS = "kefu"
CM = ("v1/configmaps", NS, "kefu-routing")
CANARY = ("apps/v1/deployments", NS, "kefu-worker-canary")
STABLE = ("apps/v1/deployments", NS, "kefu-worker")
ROUTING = "models:\n  intent: {stable: 1}\n  sentiment: {stable: 4}\n"


def deployment(name: str, replicas: int, ready: int | None = None) -> dict:
    dep = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [
                        {"name": "log-shipper", "image": "fluent/fluent-bit:3.0"},
                        {
                            "name": "worker",
                            "image": "kefu/worker:1.0",
                            "env": [{"name": "KEFU_WORKER_PORT", "value": "8001"}],
                        },
                    ]
                },
            },
        },
    }
    if ready is not None:
        dep["status"] = {"readyReplicas": ready}
    return dep


@pytest_asyncio.fixture
async def cluster():
    async with kmock.KubernetesEmulator() as k, kmock.Server(k):
        k.objects[CM] = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "kefu-routing", "namespace": NS},
            "data": {"routing.yaml": ROUTING, "README": "managed by python -m services.canary"},
        }
        k.objects[CANARY] = deployment("kefu-worker-canary", 0)
        k.objects[STABLE] = deployment("kefu-worker", 2)
        api = client.ApiClient(client.Configuration(host=str(k.url).rstrip("/")))
        yield k, api
        api.close()


def backend(api, **kw) -> KubernetesBackend:
    options = {
        "canary_deployment": "kefu-worker-canary",
        "stable_deployment": "kefu-worker",
        "container": "worker",
    }
    return KubernetesBackend(api, NS, "kefu-routing", **{**options, **kw})


def routing(k) -> dict:
    return RoutingConfig.from_yaml(k.objects[CM]["data"]["routing.yaml"]).models


def plain(value):
    """The emulator's stored object as plain dicts and lists (its views wrap nested dicts)."""
    if isinstance(value, dict) or hasattr(value, "items"):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def env_of(dep: dict) -> dict:
    worker = next(c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == "worker")
    return {e["name"]: e["value"] for e in worker.get("env", [])}


async def test_start_routes_traffic_and_scales_the_canary(cluster):
    k, api = cluster
    b = backend(api)
    route = await asyncio.to_thread(b.start, "intent", "2", 10, 50)
    assert (route.stable, route.canary, route.weight, route.shadow) == ("1", "2", 10, 50)
    assert routing(k)["intent"].canary == "2" and routing(k)["sentiment"].stable == "4"
    assert k.objects[CM]["data"]["README"] == "managed by python -m services.canary", "other keys kept"
    dep = plain(k.objects[CANARY])
    assert dep["spec"]["replicas"] == 1
    assert env_of(dep) == {
        "KEFU_WORKER_PORT": "8001",
        "KEFU_CANARY_MODEL": "intent",
        "KEFU_CANARY_VERSION": "2",
    }
    assert dep["metadata"]["annotations"][CANARY_ANNOTATION] == "intent=2"
    assert dep["spec"]["template"]["metadata"]["annotations"][CANARY_ANNOTATION] == "intent=2"
    assert dep["spec"]["template"]["spec"]["containers"][0] == {
        "name": "log-shipper",
        "image": "fluent/fluent-bit:3.0",
    }
    assert dep["spec"]["template"]["spec"]["containers"][1]["image"] == "kefu/worker:1.0"
    # starting again (same version, new weight) does not duplicate the env
    await asyncio.to_thread(b.start, "intent", "2", 25, 50)
    assert routing(k)["intent"].weight == 25
    assert list(env_of(plain(k.objects[CANARY]))).count("KEFU_CANARY_VERSION") == 1
    with pytest.raises(RolloutError, match="a rollout of version 2 is under way"):
        await asyncio.to_thread(b.start, "intent", "3", 5)
    with pytest.raises(RolloutError, match="is serving the rollout intent=2: finish it first"):
        await asyncio.to_thread(b.start, "sentiment", "5", 5)
    assert routing(k)["sentiment"].canary is None


async def test_promote(cluster):
    k, api = cluster
    b = backend(api)
    await asyncio.to_thread(b.start, "intent", "2", 10, 50)
    await asyncio.to_thread(b.set_weight, "intent", 50)
    assert routing(k)["intent"].weight == 50
    route = await asyncio.to_thread(b.promote, "intent")
    assert (route.stable, route.canary, route.weight, route.shadow) == ("2", None, 0, 0)
    assert routing(k)["intent"] == route
    stable = plain(k.objects[STABLE])
    assert stable["metadata"]["annotations"]["kefu.io/stable-intent"] == "2"
    assert stable["spec"]["template"]["metadata"]["annotations"]["kefu.io/stable-intent"] == "2"
    assert stable["spec"]["replicas"] == 2
    canary = plain(k.objects[CANARY])
    assert canary["spec"]["replicas"] == 0
    assert CANARY_ANNOTATION not in canary["metadata"].get("annotations", {})
    assert CANARY_ANNOTATION not in canary["spec"]["template"]["metadata"].get("annotations", {})


async def test_rollback(cluster):
    k, api = cluster
    b = backend(api)
    stable_before = plain(k.objects[STABLE])
    await asyncio.to_thread(b.start, "intent", "3", 10, 50)
    route = await asyncio.to_thread(b.rollback, "intent")
    assert (route.stable, route.canary, route.weight, route.shadow) == ("1", None, 0, 0)
    assert routing(k)["intent"] == route
    canary = plain(k.objects[CANARY])
    assert canary["spec"]["replicas"] == 0 and CANARY_ANNOTATION not in canary["metadata"].get(
        "annotations", {}
    )
    assert plain(k.objects[STABLE]) == stable_before, "rollback never touches stable"
    await asyncio.to_thread(b.rollback, "intent")  # idempotent


async def test_conflicting_write_is_retried(cluster):
    k, api = cluster
    patches = []

    def conflict_once(request):
        patches.append(request)
        if len(patches) == 1:
            raise kmock.KubernetesError(status=409, reason="Conflict", message="the object has been modified")
        return None  # fall through to the emulator

    k["patch /api/v1/namespaces/kefu/configmaps/kefu-routing"] << conflict_once
    route = await asyncio.to_thread(backend(api, canary_deployment=None).start, "intent", "2", 5)
    assert len(patches) == 2 and route.weight == 5 and routing(k)["intent"].weight == 5


async def test_errors_leave_the_routing_untouched(cluster):
    k, api = cluster
    with pytest.raises(RoutingError, match="cannot read the ConfigMap: HTTP 404"):
        await asyncio.to_thread(KubernetesBackend(api, NS, "missing").read)
    with pytest.raises(RoutingError, match="has no key 'routing.json'"):
        await asyncio.to_thread(KubernetesBackend(api, NS, "kefu-routing", key="routing.json").read)
    with pytest.raises(RolloutError, match="Deployment kefu/nope: cannot read it: HTTP 404"):
        await asyncio.to_thread(backend(api, canary_deployment="nope").start, "intent", "2", 10)
    with pytest.raises(RolloutError, match="has no container 'server'"):
        await asyncio.to_thread(backend(api, container="server").start, "intent", "2", 10)
    with pytest.raises(RolloutError, match="0/1 replicas ready after 0.3 s; no traffic was routed to it"):
        await asyncio.to_thread(backend(api, wait_ready_s=0.3).start, "intent", "2", 10)
    assert k.objects[CM]["data"]["routing.yaml"] == ROUTING


def kubeconfig(tmp_path, k) -> str:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
        "clusters": [{"name": "emulator", "cluster": {"server": str(k.url).rstrip("/")}}],
        "users": [{"name": "test", "user": {"token": "not-a-secret"}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "test"}}],
    }))  # fmt: skip
    return str(path)


async def test_cli_run_against_the_cluster(cluster, tmp_path, capsys):
    k, _ = cluster
    k.objects[CANARY] = deployment("kefu-worker-canary", 0, ready=1)  # its pods report ready
    policy = tmp_path / "policy.yaml"
    policy.write_text("steps: [10, 100]\nbake: 0s\nwindow: 60s\nshadow: 50\noffline: null\n")
    argv = ["run", "--kubernetes", "--kubeconfig", kubeconfig(tmp_path, k), "--namespace", NS,
            "--configmap", "kefu-routing", "--canary-deployment", "kefu-worker-canary",
            "--stable-deployment", "kefu-worker", "--container", "worker", "--wait-ready", "5",
            "--model", "intent", "--policy", str(policy), "--prometheus", "http://prometheus.test"]  # fmt: skip

    broken = FakePrometheus(broken_scenario(canary="3"))
    code = await asyncio.to_thread(main, [*argv, "--canary-version", "3"], broken.transport)
    out = capsys.readouterr().out
    assert code == 1, out
    assert "failed gate shadow_agreement" in out and "Deployment kefu-worker-canary: 1/1 ready" in out
    assert routing(k)["intent"].stable == "1" and routing(k)["intent"].canary is None
    assert plain(k.objects[CANARY])["spec"]["replicas"] == 0

    healthy = FakePrometheus(scenario(canary="2"))
    code = await asyncio.to_thread(main, [*argv, "--canary-version", "2"], healthy.transport)
    out = capsys.readouterr().out
    assert code == 0, out
    assert routing(k)["intent"].stable == "2" and routing(k)["intent"].canary is None
    assert plain(k.objects[STABLE])["metadata"]["annotations"]["kefu.io/stable-intent"] == "2"

    code = await asyncio.to_thread(main, ["status", "--kubernetes", "--kubeconfig", kubeconfig(tmp_path, k),
                                          "--namespace", NS, "--configmap", "kefu-routing", "--json"])  # fmt: skip
    assert code == 0 and '"stable": "2"' in capsys.readouterr().out
    code = await asyncio.to_thread(main, ["status", "--kubernetes", "--routing-file", "x.yaml"])
    assert code == 2 and "exclude each other" in capsys.readouterr().err
