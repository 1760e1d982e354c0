"""The Helm chart (helm/), rendered offline with helm-python-sdk: scenarios, schema, policies, k8s/ drift.

checkov is not run here (own venv, `make chart-check`); everything else helm/ci/check.py does is.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

helm_python = pytest.importorskip("helm_python")

from tests.chart_files import CHART, chart_check, pin_version  # noqa: E402 (after the importorskip)

check = chart_check()
SCENARIOS = check.scenarios()
_cache: dict[str, object] = {}


def rendered(scenario: str):
    if scenario not in _cache:
        _cache[scenario] = check.render(check.load_values(SCENARIOS[scenario]), scenario)
    return _cache[scenario]


def objects(scenario: str, kind: str | None = None) -> list[dict]:
    return [o for _, o in rendered(scenario).objects if kind is None or o["kind"] == kind]


def by_name(scenario: str, kind: str, name: str) -> dict:
    found = [o for o in objects(scenario, kind) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name} not rendered once in {scenario}"
    return found[0]


def env_of(container: dict) -> dict[str, object]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_scenarios_cover_the_issue():
    assert {"cpu-only", "gpu", "canary-on", "external-milvus", "production"} <= set(SCENARIOS)
    for name, path in SCENARIOS.items():
        assert check.load_values(path).get("milvus", {}).get("enabled", False) is False, name


@pytest.mark.slow
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_scenario_renders_and_validates_strictly(scenario):
    native, crds = check.validate(rendered(scenario))
    # ServiceMonitor x2 + PrometheusRule; canary-on adds the Argo AnalysisTemplate
    assert native >= 15 and crds == (4 if scenario == "canary-on" else 3)
    kinds = {o["kind"] for o in objects(scenario)}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy",
            "ConfigMap", "ServiceMonitor", "PrometheusRule", "ServiceAccount"} <= kinds  # fmt: skip


@pytest.mark.slow
def test_lint_is_clean_apart_from_the_undownloadable_milvus_dependency():
    assert check.lint(check.load_values(SCENARIOS["canary-on"]), "canary-on") == []


def test_validation_catches_a_bad_manifest():
    bad = check.Rendered("broken", [("t", {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
                                          "spec": {"ports": [{"port": "http-port"}], "selectr": {}}})])  # fmt: skip
    with pytest.raises(check.CheckError, match="broken: t: Service/x"):
        check.validate(bad)


# ── values schema ────────────────────────────────────────────────────────────────────────────────────────


def _scenario_with(tmp_path: Path, text: str) -> dict:
    path = tmp_path / "scenario.yaml"
    path.write_text(text, "utf-8")
    return check.load_values(path)


def test_unknown_key_in_a_scenario_fails_with_a_clear_message(tmp_path):
    values = _scenario_with(tmp_path, "gateway:\n  mode: development\nworkers:\n  intent:\n    replicaz: 3\n")
    with pytest.raises(helm_python.HelmValuesError) as e:
        check.render(values)
    assert "at '/workers/intent': additional properties 'replicaz' not allowed" in str(e.value)


def test_misspelt_pool_fails_with_a_clear_message(tmp_path):
    values = _scenario_with(
        tmp_path, "gateway:\n  mode: development\nworkers:\n  intnet:\n    enabled: true\n"
    )
    with pytest.raises(helm_python.HelmValuesError, match="at '/workers': additional properties 'intnet'"):
        check.render(values)


def test_wrong_type_in_a_scenario_fails_with_a_clear_message(tmp_path):
    values = _scenario_with(tmp_path, "gateway:\n  mode: development\n  autoscaling:\n    maxReplicas: ten\n")
    with pytest.raises(helm_python.HelmValuesError) as e:
        check.render(values)
    assert "at '/gateway/autoscaling/maxReplicas': got string, want integer" in str(e.value)


def test_wrong_enum_fails(tmp_path):
    values = _scenario_with(tmp_path, "gateway:\n  mode: development\nworkers:\n  faq:\n    device: tpu\n")
    with pytest.raises(helm_python.HelmValuesError, match="/workers/faq/device"):
        check.render(values)


PASS_THROUGH = {"affinity", "tolerations", "ingressFrom", "policy", "global", "milvus", "extraEnv", "items"}


def _walk(node: dict, path: str, defs: dict, out: list[str]) -> None:
    if "$ref" in node:
        return _walk(defs[node["$ref"].split("/")[-1]], path, defs, out)
    if node.get("type") == "object" and "properties" in node and path.split("/")[-1] not in PASS_THROUGH:
        if node.get("additionalProperties") is not False:
            out.append(path)
    for key, child in node.get("properties", {}).items():
        _walk(child, f"{path}/{key}", defs, out)
    if isinstance(node.get("additionalProperties"), dict):
        _walk(node["additionalProperties"], f"{path}/*", defs, out)


def test_schema_rejects_unknown_keys_everywhere_but_documented_pass_throughs():
    schema = json.loads((CHART / "values.schema.json").read_text("utf-8"))
    assert schema["additionalProperties"] is False
    loose: list[str] = []
    _walk(schema, "", schema["$defs"], loose)
    assert loose == []


def _leaf_paths(node, prefix=()):
    if isinstance(node, dict) and node and prefix[-1:] not in (("policy",), ("podLabels",), ("labels",)):
        for k, v in node.items():
            yield from _leaf_paths(v, (*prefix, k))
    else:
        yield prefix


def test_every_values_key_is_in_the_schema_and_has_a_comment():
    schema = json.loads((CHART / "values.schema.json").read_text("utf-8"))
    defaults = yaml.safe_load((CHART / "values.yaml").read_text("utf-8"))
    for path in _leaf_paths(defaults):
        node = schema
        for key in path:
            while "$ref" in node:
                node = schema["$defs"][node["$ref"].split("/")[-1]]
            props = node.get("properties", {})
            assert key in props or isinstance(node.get("additionalProperties"), dict), f"{'.'.join(path)}"
            node = props.get(key) or node["additionalProperties"]
    lines = (CHART / "values.yaml").read_text("utf-8").splitlines()
    key = re.compile(r"^(\s*)[A-Za-z0-9_.\-/]+:")
    for i, line in enumerate(lines):
        m = key.match(line)
        if not m:
            continue
        prev = next(ln for ln in reversed(lines[:i]) if ln.strip())
        assert prev.strip().startswith("##") and prev.startswith(m.group(1) + "##"), (
            f"values.yaml:{i + 1} {line}"
        )


def test_readme_values_table_is_current():
    readme = (CHART / "README.md").read_text("utf-8")
    table = readme.split("<!-- values-table: generated -->\n")[1].split("<!-- /values-table -->")[0]
    assert table == check.values_table(), (
        "run: python helm/ci/check.py --values-table, paste into helm/README.md"
    )


# ── behaviour of the templates ───────────────────────────────────────────────────────────────────────────


def test_production_mode_needs_the_api_key_secret():
    with pytest.raises(helm_python.HelmRenderError, match="gateway.apiKeys.existingSecret"):
        check.render({})


def test_milvus_enabled_without_the_subchart_fails_clearly():
    values = {"gateway": {"mode": "development"}, "milvus": {"enabled": True}}
    with pytest.raises(helm_python.HelmRenderError, match="helm dependency update"):
        check.render(values)


def test_canary_needs_a_version():
    values = {"gateway": {"mode": "development"}, "workers": {"intent": {"canary": {"enabled": True}}}}
    with pytest.raises(helm_python.HelmRenderError, match="workers.intent.canary.version"):
        check.render(values)


def test_every_container_is_locked_down_and_sized():
    for scenario in SCENARIOS:
        for dep in objects(scenario, "Deployment"):
            pod = dep["spec"]["template"]["spec"]
            assert (
                pod["securityContext"]["runAsNonRoot"] is True
                and pod["automountServiceAccountToken"] is False
            )
            for c in pod["containers"] + pod.get("initContainers", []):
                sc = c["securityContext"]
                where = f"{scenario} {dep['metadata']['name']}/{c['name']}"
                assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"], where
                assert sc["capabilities"]["drop"] == ["ALL"] and sc["runAsUser"] >= 10000, where
                assert {"cpu", "memory"} <= set(c["resources"]["limits"]) & set(c["resources"]["requests"]), (
                    where
                )
            main = pod["containers"][0]
            assert {"startupProbe", "livenessProbe", "readinessProbe"} <= set(main)


def test_gateway_routes_to_the_worker_services_and_mounts_its_secrets():
    services = {s["metadata"]["name"] for s in objects("production", "Service")}
    config = by_name("production", "ConfigMap", "kefu-gateway-config")
    workers = json.loads(config["data"]["workers.json"])
    assert set(workers) == {"intent", "sentiment", "faq"}
    for urls in workers.values():
        host, port = re.match(r"http://([^:]+):(\d+)$", urls[0]).groups()
        assert host in services and port == "8001"
    assert yaml.safe_load(config["data"]["policy.yaml"])["intent"]["clarify_below"] == 0.45
    pod = by_name("production", "Deployment", "kefu-gateway")["spec"]["template"]["spec"]
    env = env_of(pod["containers"][0])
    assert env["KEFU_GATEWAY_MODE"] == "production"
    assert env["KEFU_GATEWAY_API_KEYS_FILE"] == "/etc/kefu/secrets/api_keys.yaml"
    assert env["KEFU_GATEWAY_POLICY_FILE"] == "/etc/kefu/config/policy.yaml"
    assert env["KEFU_GATEWAY_REDIS_URL"] == {"secretKeyRef": {"name": "kefu-redis", "key": "redis-url"}}
    assert env["KEFU_FAQ_TOKEN"] == {"secretKeyRef": {"name": "kefu-milvus", "key": "token"}}
    assert env["KEFU_GATEWAY_TRUSTED_PROXIES"] == "10.42.0.0/16"  # behind the ingress: X-Forwarded-For
    cpu_only = env_of(
        by_name("cpu-only", "Deployment", "kefu-gateway")["spec"]["template"]["spec"]["containers"][0]
    )
    assert "KEFU_GATEWAY_TRUSTED_PROXIES" not in cpu_only  # default: the socket peer is the client
    assert {v.get("secret", {}).get("secretName") for v in pod["volumes"]} >= {"kefu-api-keys"}


def test_external_milvus_and_external_faq_workers():
    config = by_name("external-milvus", "ConfigMap", "kefu-gateway-config")
    assert json.loads(config["data"]["workers.json"])["faq"][1] == "http://faq-encoder-b.ml-shared.svc:8001"
    assert "kefu-worker-faq" not in {d["metadata"]["name"] for d in objects("external-milvus", "Deployment")}
    env = env_of(
        by_name("external-milvus", "Deployment", "kefu-gateway")["spec"]["template"]["spec"]["containers"][0]
    )
    assert env["KEFU_FAQ_URI"].startswith("https://in01-") and "KEFU_GATEWAY_MODEL_REPOSITORY" not in env


def test_gpu_pools_get_gpus_tolerations_and_the_gpu_image():
    intent = by_name("gpu", "Deployment", "kefu-worker-intent")["spec"]["template"]["spec"]
    c = intent["containers"][0]
    assert c["image"] == "kefu/worker-gpu:0.1.0"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    env = env_of(c)
    assert (env["KEFU_RUNNER_DEVICE"], env["KEFU_RUNNER_TENSORRT"], env["KEFU_RUNNER_TENSORRT_PRECISION"]) == (
        "gpu", "1", "fp16")  # fmt: skip
    assert intent["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert intent["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert [t["topologyKey"] for t in intent["topologySpreadConstraints"]] == [
        "kubernetes.io/hostname", "topology.kubernetes.io/zone"]  # fmt: skip
    assert intent["initContainers"][0]["name"] == "fetch-model"
    faq = by_name("gpu", "Deployment", "kefu-worker-faq")["spec"]["template"]["spec"]
    assert len(faq["tolerations"]) == 2
    assert faq["topologySpreadConstraints"][0]["whenUnsatisfiable"] == "DoNotSchedule"
    sentiment = by_name("gpu", "Deployment", "kefu-worker-sentiment")["spec"]["template"]["spec"]
    assert sentiment["containers"][0]["image"] == "kefu/worker-cpu:0.1.0"
    assert "nvidia.com/gpu" not in sentiment["containers"][0]["resources"]["limits"]


def test_worker_hpa_scales_on_queue_time_of_the_adapter_rule():
    adapter = yaml.safe_load((CHART / "examples" / "prometheus-adapter-values.yaml").read_text("utf-8"))
    names = {r["name"]["as"] for r in adapter["rules"]["custom"]}
    from services.worker.metrics import METRIC_NAMES

    for rule in adapter["rules"]["custom"]:
        used = set(re.findall(r"kefu_[a-z_]+", rule["seriesQuery"] + rule["metricsQuery"]))
        assert used, rule
        for name in used:
            assert re.sub(r"_(sum|count|bucket)$", "", name) in METRIC_NAMES, name
    for hpa in (
        h for h in objects("production", "HorizontalPodAutoscaler") if "worker" in h["metadata"]["name"]
    ):
        metric = hpa["spec"]["metrics"][0]
        assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] in names
        assert hpa["spec"]["scaleTargetRef"]["name"] == hpa["metadata"]["name"]
    defaults = yaml.safe_load((CHART / "values.yaml").read_text("utf-8"))
    assert (
        defaults["workers"]["intent"]["autoscaling"]["metricName"] == "kefu_worker_queue_seconds_avg" in names
    )


def test_canary_pool_is_a_second_deployment_with_its_own_service():
    canary = by_name("canary-on", "Deployment", "kefu-worker-intent-canary")
    labels = canary["spec"]["template"]["metadata"]["labels"]
    assert labels["track"] == "canary" and labels["kefu.io/pool"] == "intent"
    pod = canary["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "kefu/worker-cpu:0.2.0" and canary["spec"]["replicas"] == 1
    fetch, pin = pod["initContainers"]
    assert fetch["args"][:3] == ["copy", "models:kefu-models/model_repository/intent", "/models-src/intent"]
    assert "+ /2/**" in fetch["args"] and pin["command"][-2:] == ["intent", "2"]
    stable = by_name("canary-on", "Deployment", "kefu-worker-intent")
    assert stable["spec"]["template"]["spec"]["initContainers"][1]["command"][-1] == "1"
    assert by_name("canary-on", "Service", "kefu-worker-intent")["spec"]["selector"]["track"] == "stable"
    assert (
        by_name("canary-on", "Service", "kefu-worker-intent-canary")["spec"]["selector"]["track"] == "canary"
    )
    targets = {h["spec"]["scaleTargetRef"]["name"] for h in objects("canary-on", "HorizontalPodAutoscaler")}
    assert not any(t.endswith("-canary") for t in targets)
    script = by_name("canary-on", "ConfigMap", "kefu-pin-version")["data"]["pin_version.py"]
    assert script == (CHART / "files" / "pin_version.py").read_text("utf-8")


GATEWAY_PODS = {"podSelector": {"matchLabels": {
    "app.kubernetes.io/name": "kefu", "app.kubernetes.io/instance": "kefu", "app.kubernetes.io/component": "gateway"}}}  # fmt: skip
PROMETHEUS_PODS = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                   "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}  # fmt: skip


def _rules_by_port(policy: dict) -> dict[str, list | None]:
    """Named port -> the `from` peers admitted to it (None: anyone)."""
    out: dict[str, list | None] = {}
    for rule in policy["spec"]["ingress"]:
        for port in rule["ports"]:
            assert port["port"] not in out, f"{policy['metadata']['name']}: port {port['port']} in two rules"
            out[port["port"]] = rule.get("from")
    return out


def test_network_policies_admit_the_gateway_to_workers_and_only_prometheus_to_internal_ports():
    for scenario in SCENARIOS:
        policies = objects(scenario, "NetworkPolicy")
        workers = next(p for p in policies if p["metadata"]["name"] == "kefu-workers")
        assert _rules_by_port(workers) == {"http": [GATEWAY_PODS], "internal": [PROMETHEUS_PODS]}, scenario
        gateway = next(p for p in policies if p["metadata"]["name"] == "kefu-gateway")
        ingress_from = check.load_values(SCENARIOS[scenario]).get("gateway", {}).get("ingressFrom") or None
        assert _rules_by_port(gateway) == {"http": ingress_from, "internal": [PROMETHEUS_PODS]}, scenario
        for dep in objects(scenario, "Deployment"):
            labels = dep["spec"]["template"]["metadata"]["labels"]
            assert any(
                all(labels.get(k) == v for k, v in p["spec"]["podSelector"]["matchLabels"].items())
                for p in policies
            ), f"{scenario}: {dep['metadata']['name']} has no NetworkPolicy"
    production = _rules_by_port(by_name("production", "NetworkPolicy", "kefu-gateway"))
    assert production["http"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}]  # fmt: skip


def _selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_metrics_and_detailed_health_are_on_the_internal_port_only():
    """Issue 11.9: Prometheus scrapes the internal port, probes use it (gateway), the public Service and the
    API port carry neither /metrics nor the detailed /readyz, docs are off."""
    for scenario in SCENARIOS:
        services = objects(scenario, "Service")
        for dep in objects(scenario, "Deployment"):
            name = dep["metadata"]["name"]
            (c,) = dep["spec"]["template"]["spec"]["containers"]
            ports = {p["name"]: p["containerPort"] for p in c["ports"]}
            env = env_of(c)
            if c["name"] == "gateway":
                assert ports == {"http": 8000, "internal": 9000}, name
                assert (env["KEFU_GATEWAY_PORT"], env["KEFU_GATEWAY_INTERNAL_PORT"]) == ("8000", "9000")
                assert env["KEFU_GATEWAY_DOCS_ENABLED"] == "false"
                probes = {k: (c[k]["httpGet"]["path"], c[k]["httpGet"]["port"]) for k in
                          ("startupProbe", "livenessProbe", "readinessProbe")}  # fmt: skip
                assert probes == {"startupProbe": ("/healthz", "internal"), "livenessProbe": ("/healthz", "internal"),
                                  "readinessProbe": ("/readyz", "internal")}, name  # fmt: skip
            else:
                assert ports == {"http": 8001, "internal": 9001}, name
                assert (env["KEFU_WORKER_PORT"], env["KEFU_WORKER_INTERNAL_PORT"]) == ("8001", "9001")
                assert env["KEFU_WORKER_DOCS_ENABLED"] == "false"
                assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
            pod_labels = dep["spec"]["template"]["metadata"]["labels"]
            for svc in (s for s in services if _selects(s["spec"]["selector"], pod_labels)):
                for port in svc["spec"]["ports"]:
                    assert port["targetPort"] == port["name"] and port["name"] in ports, svc["metadata"][
                        "name"
                    ]
                if svc["spec"].get("type") not in (None, "ClusterIP"):
                    assert [p["name"] for p in svc["spec"]["ports"]] == ["http"], (
                        "internal port on a public Service"
                    )
        public = by_name(scenario, "Service", "kefu-gateway")
        assert [p["name"] for p in public["spec"]["ports"]] == ["http"]
        assert [
            p["port"] for p in by_name(scenario, "Service", "kefu-gateway-internal")["spec"]["ports"]
        ] == [9000]
        for monitor in objects(scenario, "ServiceMonitor"):
            (endpoint,) = monitor["spec"]["endpoints"]
            assert (endpoint["port"], endpoint["path"]) == ("internal", "/metrics")
            scraped = [s for s in services if _selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
                       and "internal" in {p["name"] for p in s["spec"]["ports"]}]  # fmt: skip
            assert scraped, (
                f"{scenario}: {monitor['metadata']['name']} finds no Service with an internal port"
            )


def test_monitoring_objects_carry_the_observability_files():
    rule = objects("production", "PrometheusRule")[0]
    assert rule["spec"] == yaml.safe_load((CHART / "files" / "rules" / "kefu-rules.yaml").read_text("utf-8"))
    dashboards = sorted((CHART / "files" / "dashboards").glob("*.json"))
    maps = [
        c
        for c in objects("production", "ConfigMap")
        if c["metadata"]["labels"].get("grafana_dashboard") == "1"
    ]
    assert len(maps) == len(dashboards) >= 1
    for cm in maps:
        ((key, text),) = cm["data"].items()
        assert json.loads(text) == json.loads((CHART / "files" / "dashboards" / key).read_text("utf-8"))
    monitors = objects("production", "ServiceMonitor")
    assert {m["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] for m in monitors} == {
        "gateway", "worker"}  # fmt: skip


# ── k8s/ and the pin script ──────────────────────────────────────────────────────────────────────────────


def test_k8s_is_the_rendered_production_profile():
    expected = check.k8s_files(rendered("production"))
    assert check.k8s_drift(expected) == [], "k8s/ drifted from the chart: run `make k8s`"
    changed = dict(expected)
    first = sorted(changed)[0]
    changed[first] = changed[first].replace("kefu", "kefu-edited", 1)
    changed.pop(sorted(changed)[-1])
    problems = check.k8s_drift(changed)
    assert any("differs" in p for p in problems) and any("not rendered" in p for p in problems)


def test_pin_version_builds_a_one_version_view_the_worker_reads(tmp_path):
    from services.runtime.repository import ModelRepository, verify_manifest, write_manifest

    src = tmp_path / "src" / "faq"
    for v in (1, 2, 3):
        (src / str(v)).mkdir(parents=True)
        (src / str(v) / "inference.json").write_text(f"v{v}")
        write_manifest(src / str(v))
    (src / "thresholds.json").write_text("{}")
    (src / "config.yaml").write_text(
        "name: faq\ntask: embedding\nplatform: paddle_inference\n"
        "inputs: [{name: input_ids, datatype: INT64, dims: [-1, -1]}]\n"
        "outputs: [{name: embedding, datatype: FP32, dims: [-1, 128]}]\n"
        "max_batch_size: 64\nmax_seq_len: 48\nembedding_dim: 128\nversion_policy: {latest: 1}\n"
    )
    pin = pin_version()
    assert pin.main([str(tmp_path / "src"), str(tmp_path / "view"), "faq", "2"]) == 0
    view = ModelRepository(tmp_path / "view")
    assert view.versions("faq") == [2] and view.serving_versions("faq") == [2]
    verify_manifest(tmp_path / "view" / "faq" / "2")
    assert (tmp_path / "view" / "faq" / "thresholds.json").read_text() == "{}"
    with pytest.raises(SystemExit, match=r"no version 7 .*have \['1', '2', '3'\]"):
        pin.pin(tmp_path / "src", tmp_path / "view2", "faq", 7)
    assert pin.main(["a", "b", "faq", "zero"]) == 2
