"""`make reliability`, short version: every fault under load on the real stack, two worker replicas in network
namespaces this run creates (root, iproute2, nftables: .ci/run installs them), one replica cut off by nftables.

One run of `python -m bench.reliability --short` (3 s of load, the fault held 3 s, 12 s after it; about 3 min on
2 cores, most of it the two workers loading their models), then its figures are checked."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.reliability_experiments import EXPERIMENTS

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    assert os.geteuid() == 0, "the reliability test creates network namespaces: run it as root (CI does)"
    assert shutil.which("ip") and shutil.which("nft"), (
        "iproute2 and nftables are needed (.ci/run installs them)"
    )
    before = namespaces()
    out = tmp_path_factory.mktemp("reliability")
    argv = [sys.executable, "-m", "bench.reliability", "--short", "--no-doc", "--out", str(out)]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=480)
    except subprocess.TimeoutExpired:
        proc.terminate()  # SIGTERM: the run stops its stack and deletes its namespaces
        stdout, stderr = proc.communicate(120)
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    [path] = out.glob("reliability-*.json")
    return {
        "result": json.loads(path.read_text("utf-8")),
        "stdout": stdout,
        "leftover": namespaces() - before,
    }


def rows(run) -> dict[str, dict]:
    return {row["experiment"]: row for row in run["result"]["experiments"]}


def test_every_experiment_ran_under_load_and_printed_its_figures(run):
    by_name = rows(run)
    assert list(by_name) == list(EXPERIMENTS)
    for name, row in by_name.items():
        assert row["requests"] >= 30, name  # 6 req/s for the 12 s after the fault
        assert f"| {EXPERIMENTS[name][0]} |" in run["stdout"], name  # the table line of each experiment
    assert by_name["worker_killed"]["notes"]["restart_ready_s"] > 0
    assert by_name["store_restarted"]["notes"]["restart_ready_s"] > 0
    assert by_name["engine_killed"]["notes"]["killed_pid"] > 0
    assert by_name["hot_reload"]["notes"]["statuses"] == [200, 200]  # the new version loaded on both workers


def test_every_fault_is_recovered_from_and_no_acknowledged_write_is_lost(run):
    for name, row in rows(run).items():
        assert row["recovered"], f"{name}: answers were not good again before the run ended: {row}"
        assert row["writes_lost"] == 0, f"{name}: {row}"


def test_traffic_moves_to_the_other_replica_when_one_is_cut_off(run):
    cut = rows(run)["netns_cut"]
    assert cut["notes"]["cut_s"] == 3.0
    assert cut["client_error_pct"] <= 0.1, cut


def test_planned_changes_cost_no_client_errors(run):
    for name in ("hot_reload", "canary_rollback"):
        assert rows(run)[name]["client_errors"] == 0, rows(run)[name]


def test_network_namespaces_are_removed(run):
    assert run["result"]["layout"].startswith("gateway and each worker in a network namespace")
    assert not run["leftover"]
