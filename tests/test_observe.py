"""`make observe` for real: the Debian Prometheus started by `python -m observe.prometheus` on a free loopback
port (1 s scrape and rule interval) scrapes a real worker (fake engine, no model training) and a real gateway in
front of it; the test sends traffic and reads counters, a recording rule of the chart's rule file and the alert
rules back through Prometheus's HTTP API."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from observe.prometheus import ObserveSettings, config
from services.runtime.repository import ModelConfig, write_manifest
from services.runtime.tokenizer import TokenizerSettings

ROOT = Path(__file__).resolve().parent.parent
VOCAB = ROOT / "models" / "pretrained" / "ernie-tiny-cs" / "vocab.txt"
DEMO_KEY = "kefu-demo-key-change-me"  # the development key of services/gateway/defaults/api_keys.yaml

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("prometheus") is None, reason="prometheus not installed (apt-get install prometheus)"
    ),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fake_model(repo: Path, name: str, labels: list[str]) -> None:
    """A classifier version the fake engine can serve: real config, tokenizer and manifest, dummy weights."""
    config = ModelConfig(
        name=name,
        task="classification",
        labels=labels,
        inputs=[{"name": "input_ids", "datatype": "INT64", "dims": [-1, -1]}],
        outputs=[{"name": "probs", "datatype": "FP32", "dims": [-1, len(labels)]}],
        max_batch_size=8,
        max_seq_len=32,
    )
    v = repo / name / "1"
    v.mkdir(parents=True)
    config.save(repo / name / "config.yaml")
    shutil.copy(VOCAB, v / "vocab.txt")
    TokenizerSettings(max_seq_len=32).save(v / "tokenizer.json")
    (v / "labels.txt").write_text("\n".join(labels) + "\n", "utf-8")
    for f in ("inference.json", "inference.pdiparams", "evaluation.json", "training.json"):
        (v / f).write_text("{}", "utf-8")
    write_manifest(v)


def wait_http(url: str, proc: subprocess.Popen, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log = Path(proc.args_log).read_text("utf-8", "replace")[-3000:]
            raise AssertionError(f"{what} exited with {proc.returncode}: {log}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{what} not ready at {url} after {timeout}s")


def start(argv: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    """`argv` in its own process group, output to `log` (a pipe nobody reads could fill and block it)."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    proc.args_log = str(log)
    return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(5)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Worker (fake engine) + gateway + Prometheus, each on a free loopback port."""
    tmp = tmp_path_factory.mktemp("observe")
    repo = tmp / "model_repository"
    fake_model(repo, "intent", ["物流查询", "退款", "转人工"])
    fake_model(repo, "sentiment", ["negative", "positive"])
    wp, gp, pp = free_port(), free_port(), free_port()
    wip, gip = free_port(), free_port()  # internal ports: /metrics
    procs = []
    try:
        worker = start(
            [sys.executable, "-m", "services.worker", "--repository", str(repo), "--port", str(wp)]
            + ["--internal-port", str(wip)],
            tmp / "worker.log",
            {"KEFU_WORKER_BACKEND": "fake", "KEFU_WORKER_WARMUP": "false"},
        )
        procs.append(worker)
        wait_http(f"http://127.0.0.1:{wp}/v2/health/ready", worker, "worker")
        workers = {m: [f"http://127.0.0.1:{wp}"] for m in ("intent", "sentiment", "faq")}
        gateway = start(
            [sys.executable, "-m", "services.gateway", "--port", str(gp), "--workers", json.dumps(workers)]
            + ["--internal-port", str(gip), "--no-faq-enabled", "--log-level", "warning"],
            tmp / "gateway.log",
        )
        procs.append(gateway)
        wait_http(f"http://127.0.0.1:{gp}/readyz", gateway, "gateway")
        prom = start(
            [sys.executable, "-m", "observe.prometheus", "--port", str(pp), "--worker", f"127.0.0.1:{wip}"]
            + ["--gateway", f"127.0.0.1:{gip}", "--scrape-interval", "1s", "--evaluation-interval", "1s"]
            + ["--storage", str(tmp / "prometheus")],
            tmp / "prometheus.log",
        )
        procs.append(prom)
        wait_http(f"http://127.0.0.1:{pp}/-/ready", prom, "prometheus", timeout=30)
        yield {
            "worker": wp,
            "gateway": gp,
            "worker_internal": wip,
            "gateway_internal": gip,
            "prometheus": pp,
            "storage": tmp / "prometheus",
        }
    finally:
        for p in reversed(procs):
            stop(p)


def query(port: int, expr: str) -> list[dict]:
    r = httpx.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": expr}, timeout=5)
    assert r.status_code == 200, r.text
    return r.json()["data"]["result"]


def eventually(port: int, expr: str, check, timeout: float = 30) -> list[dict]:
    """Poll `expr` until `check(result)` holds (Prometheus scrapes and evaluates every second here)."""
    deadline, result = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        result = query(port, expr)
        if result and check(result):
            return result
        time.sleep(0.5)
    raise AssertionError(f"{expr} never satisfied the check; last result {result}")


def test_traffic_reaches_prometheus_and_rules_evaluate(stack):
    pp = stack["prometheus"]
    eventually(pp, 'up{job=~"kefu-worker|kefu-gateway"} == 1', lambda r: len(r) == 2)
    body = {
        "inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["快递到哪了", "我要退款"]}]
    }
    headers = {"X-API-Key": DEMO_KEY}
    seq = itertools.count()

    def traffic(infers: int, chats: int) -> None:
        for _ in range(infers):
            r = httpx.post(f"http://127.0.0.1:{stack['worker']}/v2/models/intent/infer", json=body, timeout=5)
            assert r.status_code == 200, r.text
        for _ in range(chats):  # distinct texts: the gateway's response cache would answer repeats itself
            i = next(seq)
            r = httpx.post(
                f"http://127.0.0.1:{stack['gateway']}/v1/chat",
                json={"session_id": f"s-{i}", "text": f"我的快递三天了还没到，订单{i}"},
                headers=headers,
                timeout=10,
            )
            assert r.status_code == 200, r.text

    # two rounds: a rate needs the counters scraped before and after an increase
    traffic(5, 3)
    eventually(
        pp, "sum(kefu_gateway_model_requests_total) > 0 and sum(kefu_worker_request_success_total) > 0", bool
    )
    time.sleep(1.5)  # one more scrape of the first round's values
    traffic(10, 7)

    # raw counters: the worker answered at least our 15 requests (+ the gateway's calls)
    got = eventually(
        pp,
        'sum(kefu_worker_request_success_total{model="intent", version="1"})',
        lambda r: float(r[0]["value"][1]) >= 15,
    )
    assert float(got[0]["value"][1]) >= 15
    eventually(
        pp,
        'sum(kefu_gateway_requests_total{route="/v1/chat", status="200"})',
        lambda r: float(r[0]["value"][1]) >= 10,
    )
    eventually(pp, "sum(kefu_gateway_actions_total)", lambda r: float(r[0]["value"][1]) >= 10)

    # recording rules of the chart's rule file, evaluated by this Prometheus
    rate = eventually(
        pp,
        'model_version:kefu_worker_request_success:rate5m{model="intent", version="1"}',
        lambda r: float(r[0]["value"][1]) > 0,
    )
    assert rate[0]["metric"]["model"] == "intent"
    # NaN (0/0) until two scrapes straddle some traffic; then a number, and with no 5xx it is 0, not "no data"
    errors = eventually(
        pp, "kefu:slo_availability_errors:ratio_rate5m", lambda r: r[0]["value"][1] not in ("NaN", "+Inf")
    )
    assert float(errors[0]["value"][1]) == 0.0  # no 5xx: 0, not "no data"
    calls = eventually(
        pp,
        'model_role:kefu_gateway_model_requests:rate10m{model="intent"}',
        lambda r: float(r[0]["value"][1]) > 0,
    )
    assert calls[0]["metric"]["role"] == "stable"


def evaluated_since(port: int, since: float, timeout: float = 30) -> list[dict]:
    """The rule groups once every group has been evaluated after Prometheus time `since`."""
    deadline, groups = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        r = httpx.get(f"http://127.0.0.1:{port}/api/v1/rules", timeout=5).json()
        groups = r["data"]["groups"]
        if groups and all(prom_time(g["lastEvaluation"]) > since for g in groups):
            return groups
        time.sleep(0.5)
    raise AssertionError(
        f"rule groups not all evaluated after {since}: {[g['lastEvaluation'] for g in groups]}"
    )


def prom_time(stamp: str) -> float:
    """Seconds since the epoch of an RFC 3339 time as Prometheus writes it (nanoseconds, Z or an offset)."""
    from datetime import datetime

    head, _, frac = stamp.partition(".")
    digits = "".join(itertools.takewhile(str.isdigit, frac))
    zone = frac[len(digits) :] if frac else head[19:]
    parsed = datetime.fromisoformat(head[:19] + zone.replace("Z", "+00:00"))
    return parsed.timestamp() + (float(f"0.{digits}") if digits else 0.0)


def test_prometheus_loaded_every_rule_of_the_chart(stack):
    import yaml

    from observe.rules import RULES_FILE

    pp = stack["prometheus"]
    eventually(pp, 'up{job=~"kefu-worker|kefu-gateway"} == 1', lambda r: len(r) == 2)
    # every group evaluated on scraped data: after the scrape that saw both targets up
    since = float(query(pp, "time()")[1])  # a scalar: [evaluation time, "value"]
    groups = evaluated_since(pp, since + 1)
    chart = yaml.safe_load(RULES_FILE.read_text("utf-8"))["groups"]
    expected = {g["name"]: [r.get("record") or r["alert"] for r in g["rules"]] for g in chart}
    loaded = {g["name"]: [rule["name"] for rule in g["rules"]] for g in groups}
    assert loaded == expected  # every rule of the chart's file, in its groups and order, and nothing else
    names = {name for group in loaded.values() for name in group}
    assert {"KefuWorkerNotReady", "KefuFaqStoreDown", "KefuCanaryWorseThanStable"} <= names
    rules = [rule for g in groups for rule in g["rules"]]
    assert [
        (rule["name"], rule["health"], rule.get("lastError")) for rule in rules if rule["health"] != "ok"
    ] == []
    # Nothing else is wrong with this stack, so no alert is firing, nor pending (every alert has a `for:` of
    # minutes: a condition wrongly true shows here as pending long before it could fire). The one exception is
    # real: the gateway runs without a store (--no-faq-enabled) and reports kefu_faq_store_up 0.
    alerts = httpx.get(f"http://127.0.0.1:{pp}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
    assert [(a["labels"]["alertname"], a["state"]) for a in alerts] == [("KefuFaqStoreDown", "pending")]
    assert query(pp, "kefu_faq_store_up")[0]["value"][1] == "0"
    cfg = (stack["storage"] / "prometheus.yml").read_text("utf-8")
    assert "kefu-rules.yaml" in cfg and f"127.0.0.1:{stack['worker_internal']}" in cfg


def test_settings_refuse_non_loopback_and_bad_intervals():
    with pytest.raises(ValueError, match="loopback"):
        ObserveSettings(host="0.0.0.0")
    with pytest.raises(ValueError, match="scrape_interval"):
        ObserveSettings(scrape_interval="fast")
    cfg = config(ObserveSettings(gateway="", port=9999))
    assert [j["job_name"] for j in cfg["scrape_configs"]] == ["kefu-worker", "prometheus"]
