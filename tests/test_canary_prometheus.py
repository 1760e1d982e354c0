"""The gates against a real Prometheus (Debian package) on loopback, scraping the gateway's own metric classes fed
with simulated canary traffic: the promql.py queries, rate-to-count conversion and `le` parsing hold for real.

A good v2 (same answers as stable) passes; a v3 with permuted labels fails on agreement and label shift."""

from __future__ import annotations

import http.server
import shutil
import socket
import subprocess
import threading
import time

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from services.canary.analysis import Analyzer, Status
from services.canary.policy import (
    AgreementGate,
    ConfidenceShiftGate,
    ErrorRateGate,
    GatesConfig,
    LabelShiftGate,
    LatencyGate,
)
from services.canary.prometheus import PrometheusClient
from services.gateway.metrics import GatewayMetrics

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("prometheus") is None, reason="prometheus not installed (apt-get install prometheus)"
    ),
]

LABELS = ["物流查询", "退换货", "退款", "商品咨询", "其他/闲聊"]
# a skewed label mix: permuting labels changes the marginal distribution only when the classes are unequal
SKEW = [0, 0, 0, 0, 1, 1, 1, 2, 2, 3]
GATES = GatesConfig(
    error_rate=ErrorRateGate(min_requests=50),
    latency_p99=LatencyGate(min_requests=50),
    shadow_agreement=AgreementGate(min_comparisons=50),
    confidence_shift=ConfidenceShiftGate(min_samples=50),
    label_shift=LabelShiftGate(min_samples=50),
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_metrics(registry: CollectorRegistry) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            body = generate_latest(registry)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def traffic(m: GatewayMetrics, feed: bool = True) -> None:
    """Stable v1 serves 400 requests; v2 (good) and v3 (labels permuted) each serve 120 and shadow 200.

    `feed=False` only creates every series at 0: Prometheus must see a counter at 0 before it grows, or rate()
    has nothing to compare with.
    """

    def inc(counter, *labels):
        child = counter.labels(*labels)
        if feed:
            child.inc()

    def observe(histogram, value, *labels):
        child = histogram.labels(*labels)
        if feed:
            child.observe(value)

    for i in range(400):
        label = LABELS[SKEW[i % 10]]
        inc(m.model_requests, "intent", "1", "stable", "ok" if i % 100 else "error")
        observe(m.model_duration, 0.02, "intent", "1", "stable")
        inc(m.model_predictions, "intent", "1", "stable", label)
        observe(m.model_confidence, 0.6 + 0.35 * ((i * 7) % 10) / 10, "intent", "1", "stable")
    for version, permuted in (("2", False), ("3", True)):
        for i in range(320):
            role = "canary" if i < 120 else "shadow"
            label = LABELS[(SKEW[i % 10] + 2) % 5] if permuted else LABELS[SKEW[i % 10]]
            inc(m.model_requests, "intent", version, role, "ok")
            observe(m.model_duration, 0.021, "intent", version, role)
            inc(m.model_predictions, "intent", version, role, label)
            observe(m.model_confidence, 0.6 + 0.35 * ((i * 3) % 10) / 10, "intent", version, role)
            if role == "shadow":
                inc(
                    m.shadow_comparisons,
                    "intent",
                    "1",
                    version,
                    "false" if permuted or i % 25 == 0 else "true",
                )


@pytest.fixture
def prometheus(tmp_path):
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry)
    traffic(metrics, feed=False)
    server = serve_metrics(registry)
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "gateway", "static_configs": [{"targets": [f"127.0.0.1:{server.server_port}"]}]}],
    }  # fmt: skip
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = open(tmp_path / "prometheus.log", "w")
    proc = subprocess.Popen(
        ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/api/v1/query", params={"query": 'up{job="gateway"} == 1'}).json()[
                    "data"
                ]["result"]:
                    break  # ready, and the target has been scraped once
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "prometheus did not scrape the target within 30 s"
            time.sleep(0.2)
        yield url, metrics
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()
        server.shutdown()


def test_gates_on_a_real_prometheus(prometheus):
    url, metrics = prometheus
    with PrometheusClient(url) as prom:
        deadline = time.monotonic() + 20
        while not prom.query('kefu_gateway_model_requests_total{version="3"}'):  # the zeros were scraped
            assert time.monotonic() < deadline, "the series at 0 never reached Prometheus"
            time.sleep(0.2)
        traffic(metrics)
        while prom.scalar('sum(kefu_gateway_model_requests_total{version="3"})') != 320:
            assert time.monotonic() < deadline, "the traffic never reached Prometheus"
            time.sleep(0.2)
        analyzer = Analyzer(prom, GATES)
        good = analyzer.analyze("intent", "1", "2", "1m")
        bad = analyzer.analyze("intent", "1", "3", "1m")
    g = {r.name: r for r in good.results}
    b = {r.name: r for r in bad.results}
    assert good.verdict == Status.PASS, good.table()
    assert g["shadow_agreement"].observed["agreement"] == pytest.approx(192 / 200)
    assert g["error_rate"].observed["stable"] == pytest.approx(4 / 400)
    assert g["error_rate"].observed["canary"] == 0.0, "no error series counts as 0 (promql.ratio)"
    assert 320 <= g["error_rate"].observed["canary_requests"] <= 480, (
        "counts from rate x window (extrapolated)"
    )
    assert g["label_shift"].observed["psi"] == pytest.approx(0.0, abs=1e-9)
    assert g["latency_p99"].observed["canary_ms"] == pytest.approx(
        g["latency_p99"].observed["stable_ms"], rel=0.1
    )
    assert bad.verdict == Status.FAIL, bad.table()
    assert [r.name for r in bad.failed()] == ["shadow_agreement", "label_shift"]
    assert b["shadow_agreement"].observed["agreement"] == 0.0
    assert "agrees with stable on only 0.00% of" in b["shadow_agreement"].message
