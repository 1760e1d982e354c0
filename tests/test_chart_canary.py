"""Chart support of canary rollouts (issue 7): the routing ConfigMap the gateway mounts, the canary Services it
calls, the pin init containers that act on what the rollout tool patches, the tool's RBAC, and the Argo
AnalysisTemplate whose PromQL is generated from services/canary/promql.py (with a drift check)."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import yaml

helm_python = pytest.importorskip("helm_python")

from tests.chart_files import CHART, chart_check  # noqa: E402 (after the importorskip)

check = chart_check()
CANARY_ON = check.load_values(check.scenarios()["canary-on"])


def render(values: dict) -> list[dict]:
    return [o for _, o in check.render(values, "test").objects]


def one(objs: list[dict], kind: str, name: str) -> dict:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} rendered"
    return found[0]


def with_values(**changes) -> dict:
    values = copy.deepcopy(CANARY_ON)
    for dotted, value in changes.items():
        node = values
        *path, last = dotted.split("__")
        for key in path:
            node = node.setdefault(key, {})
        node[last] = value
    return values


@pytest.fixture(scope="module")
def canary_on() -> list[dict]:
    return render(CANARY_ON)


def test_routing_configmap_routes_every_pinned_pool_to_its_version(canary_on):
    from services.canary.routing import RoutingConfig

    cm = one(canary_on, "ConfigMap", "kefu-routing")
    config = RoutingConfig.from_yaml(cm["data"]["routing.yaml"])
    assert {m: r.stable for m, r in config.models.items()} == {"intent": "1", "sentiment": "2"}
    assert all(r.canary is None for r in config.models.values())


def test_routing_configmap_takes_an_initial_routing_from_values():
    from services.canary.routing import RoutingConfig

    routing = {"models": {"intent": {"stable": "1", "canary": "2", "weight": 5, "shadow": 20}}}
    cm = one(render(with_values(canary__routing=routing)), "ConfigMap", "kefu-routing")
    r = RoutingConfig.from_yaml(cm["data"]["routing.yaml"]).models["intent"]
    assert (r.stable, r.canary, r.weight, r.shadow) == ("1", "2", 5, 20)


def test_gateway_mounts_the_routing_directory_and_calls_the_canary_services(canary_on):
    import json

    gw = one(canary_on, "Deployment", "kefu-gateway")["spec"]["template"]["spec"]
    container = gw["containers"][0]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert env["KEFU_GATEWAY_ROUTING_FILE"] == "/etc/kefu/routing/routing.yaml"
    assert env["KEFU_GATEWAY_CANARY_WORKERS"] == {
        "configMapKeyRef": {"name": "kefu-gateway-config", "key": "canary_workers.json"}
    }
    mount = next(m for m in container["volumeMounts"] if m["name"] == "routing")
    assert mount["mountPath"] == "/etc/kefu/routing" and "subPath" not in mount  # updates need the directory
    volume = next(v for v in gw["volumes"] if v["name"] == "routing")
    assert volume["configMap"]["name"] == "kefu-routing"
    urls = json.loads(one(canary_on, "ConfigMap", "kefu-gateway-config")["data"]["canary_workers.json"])
    assert urls == {"intent": ["http://kefu-worker-intent-canary:8001"],
                    "sentiment": ["http://kefu-worker-sentiment-canary:8001"]}  # fmt: skip
    services = {o["metadata"]["name"] for o in canary_on if o["kind"] == "Service"}
    assert {"kefu-worker-intent-canary", "kefu-worker-sentiment-canary"} <= services
    # the gateway reads each canary variable the chart sets
    from services.gateway.settings import GatewaySettings

    fields = {f"KEFU_GATEWAY_{n.upper()}" for n in GatewaySettings.model_fields}
    canary_env = {"KEFU_GATEWAY_ROUTING_FILE", "KEFU_GATEWAY_ROUTING_POLL_S", "KEFU_GATEWAY_CANARY_WORKERS",
                  "KEFU_GATEWAY_SHADOW_TIMEOUT_S", "KEFU_GATEWAY_SHADOW_MAX_INFLIGHT"}  # fmt: skip
    assert canary_env <= fields and canary_env <= set(env)


def test_pin_init_containers_read_the_annotations_the_rollout_tool_writes(canary_on):
    from services.canary.kube import CANARY_ANNOTATION, STABLE_ANNOTATION

    for name, annotation in (
        ("kefu-worker-intent", STABLE_ANNOTATION.format(model="intent")),
        ("kefu-worker-intent-canary", CANARY_ANNOTATION),
    ):
        pod = one(canary_on, "Deployment", name)["spec"]["template"]["spec"]
        pin = next(c for c in pod["initContainers"] if c["name"] == "pin-version")
        [env] = pin["env"]
        assert env["name"] == "KEFU_PIN_OVERRIDE"
        assert env["valueFrom"]["fieldRef"]["fieldPath"] == f"metadata.annotations['{annotation}']"


@pytest.mark.parametrize(
    ("override", "served", "code"),
    [("", "1", 0), ("3", "3", 0), ("intent=3", "3", 0), ("sentiment=3", None, 1), ("x", None, 1)],
)
def test_pin_script_follows_the_annotation(tmp_path, override, served, code):
    src = tmp_path / "src"
    for v in ("1", "3"):
        (src / "intent" / v).mkdir(parents=True)
    (src / "intent" / "config.yaml").write_text("name: intent\nversion_policy: {latest: 1}\n")
    env = {**os.environ, "KEFU_PIN_OVERRIDE": override}
    script = CHART / "files" / "pin_version.py"
    proc = subprocess.run([sys.executable, str(script), str(src), str(tmp_path / "view"), "intent", "1"],
                          env=env, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == code, proc.stderr
    if served is not None:
        cfg = yaml.safe_load((tmp_path / "view" / "intent" / "config.yaml").read_text())
        assert cfg["version_policy"] == {"specific": [int(served)]}
    else:
        assert "pin_version:" in proc.stderr


def test_a_canary_needs_a_pinned_stable_pool():
    values = with_values(workers__intent__version=0)
    with pytest.raises(helm_python.HelmRenderError, match="workers.intent.version"):
        render(values)


def test_rollout_tool_rbac_is_limited_to_the_routing_and_the_worker_deployments(canary_on):
    role = one(canary_on, "Role", "kefu-canary")
    rules = {tuple(r["resources"]): r for r in role["rules"]}
    assert rules[("configmaps",)]["resourceNames"] == ["kefu-routing"]
    assert set(rules[("configmaps",)]["verbs"]) == {"get", "patch"}
    deployments = rules[("deployments",)]
    assert set(deployments["verbs"]) == {"get", "patch"}
    assert {"kefu-worker-intent", "kefu-worker-intent-canary"} <= set(deployments["resourceNames"])
    binding = one(canary_on, "RoleBinding", "kefu-canary")
    assert (
        binding["subjects"][0]["name"] == one(canary_on, "ServiceAccount", "kefu-canary")["metadata"]["name"]
    )


def test_canary_off_renders_no_routing():
    objs = render(with_values(canary__enabled=False))
    assert not [o for o in objs if o["metadata"]["name"] in ("kefu-routing", "kefu-canary")]
    gw = one(objs, "Deployment", "kefu-gateway")["spec"]["template"]["spec"]["containers"][0]
    assert "KEFU_GATEWAY_ROUTING_FILE" not in {e["name"] for e in gw["env"]}


def test_argo_analysis_template_uses_the_tools_promql():
    import kubernetes_validate

    from services.canary.argo import queries

    rendered = check.render(with_values(canary__argo={"enabled": True}), "argo")
    native, crds = check.validate(rendered)
    assert crds == 4  # ServiceMonitors, PrometheusRule and the AnalysisTemplate against CRD_SCHEMAS
    template = one([o for _, o in rendered.objects], "AnalysisTemplate", "kefu-canary")
    metrics = {m["name"]: m for m in template["spec"]["metrics"]}
    expected = queries()
    for name, query in expected.items():
        metric = metrics[name.replace("_", "-")]
        assert metric["provider"]["prometheus"]["query"] == query
        assert metric["successCondition"].startswith("result[0]")
    assert metrics["shadow-agreement"]["successCondition"] == "result[0] >= 0.9"
    assert [a["name"] for a in template["spec"]["args"]] == [
        "model",
        "stable-version",
        "canary-version",
        "window",
    ]
    job = metrics["all-gates"]["provider"]["job"]["spec"]
    args = job["template"]["spec"]["containers"][0]["args"]
    assert "--canary-version={{args.canary-version}}" in args and "--model={{args.model}}" in args
    manifest = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "x"}, "spec": job}
    kubernetes_validate.validate(manifest, "1.33.0", strict=True)


def test_argo_queries_file_is_generated_and_current():
    from services.canary.argo import main

    assert main(["--check"]) == 0


def test_argo_queries_parse_in_promtool():
    from observe.promql_check import check_expressions, promtool

    try:
        promtool()
    except Exception as e:  # noqa: BLE001 - promtool is a Debian package; CI installs it
        pytest.skip(f"promtool not available: {e}")
    from services.canary.argo import queries

    filled = {
        name: q.replace("{{args.model}}", "intent").replace("{{args.stable-version}}", "1")
        .replace("{{args.canary-version}}", "2").replace("{{args.window}}", "5m")
        for name, q in queries().items()
    }  # fmt: skip
    assert check_expressions(filled) == []
