"""`python -m services.canary` against the local backend (routing file) and a fake Prometheus: run promotes a
healthy canary, rolls back a broken one saying which gate failed and by how much; exit codes 0 / 1 / 2 / 3."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from services.canary.analysis import Analyzer
from services.canary.backends import LocalBackend
from services.canary.cli import main
from services.canary.policy import RolloutPolicy
from services.canary.prometheus import PrometheusClient
from services.canary.rollout import Rollout
from services.canary.routing import RoutingConfig
from tests.test_canary_fakes import FakePrometheus, broken_scenario, scenario, write_evaluation

ROOT = Path(__file__).resolve().parent.parent
POLICY = """
steps: [10, 100]
bake: 0s
window: 60s
shadow: 50
max_extra_bakes: 1
gates:
  error_rate: {min_requests: 100}
  latency_p99: {min_requests: 100}
  shadow_agreement: {min_agreement: 0.9, min_comparisons: 100}
  confidence_shift: {max_psi: 0.25, min_samples: 200}
  label_shift: {measure: psi, max: 0.25, min_samples: 200}
offline: {max_drop: 0.02}
"""


@pytest.fixture
def stack(tmp_path):
    routing = tmp_path / "routing.yaml"
    routing.write_text("models:\n  intent: {stable: 1}\n  sentiment: {stable: 4}\n")
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    repo = tmp_path / "repo"
    write_evaluation(repo, "intent", "1", accuracy=0.815, macro_f1=0.814)
    write_evaluation(repo, "intent", "2", accuracy=0.83, macro_f1=0.82)
    write_evaluation(repo, "intent", "3", accuracy=0.81, macro_f1=0.81)
    return tmp_path, routing, policy, repo


def routing_of(path: Path):
    return RoutingConfig.from_yaml(path.read_text()).models


class RecordingPrometheus(FakePrometheus):
    """Also records the routing file's state each time a gate queries: what traffic the analysis saw."""

    def __init__(self, answers, routing: Path):
        super().__init__(answers)
        self.routing = routing
        self.seen = set()

    def handler(self, request):
        r = routing_of(self.routing)["intent"]
        self.seen.add((r.stable, r.canary, r.weight, r.shadow))
        return super().handler(request)


def run_cli(stack, canary: str, answers, extra=()):
    tmp, routing, policy, repo = stack
    fake = RecordingPrometheus(answers, routing)
    report = tmp / f"report-{canary}.json"
    argv = ["run", "--routing-file", str(routing), "--model", "intent", "--canary-version", canary,
            "--policy", str(policy), "--prometheus", "http://prometheus.test", "--repository", str(repo),
            "--report", str(report), *extra]  # fmt: skip
    code = main(argv, prometheus_transport=fake.transport)
    return code, fake, json.loads(report.read_text()) if report.exists() else None


def test_run_promotes_a_healthy_canary(stack, capsys):
    _, routing, _, _ = stack
    code, fake, report = run_cli(stack, "2", scenario(canary="2"))
    out = capsys.readouterr().out
    assert code == 0, out
    assert fake.seen == {("1", "2", 10.0, 50.0)}, "the gates ran while the canary had 10% and shadow 50%"
    assert routing_of(routing)["intent"].model_dump() == {
        "stable": "2", "canary": None, "weight": 0.0, "shadow": 0.0, "sticky": True
    }  # fmt: skip
    assert routing_of(routing)["sentiment"].stable == "4", "other models untouched"
    assert "offline gate: PASS" in out and "verdict: PASS" in out
    assert "PROMOTED intent version 2 to stable" in out and "result: PROMOTED intent version 2" in out
    assert report["result"] == "promoted" and report["analyses"][0]["verdict"] == "pass"


def test_run_rolls_back_a_broken_canary_naming_the_gate(stack, capsys):
    _, routing, _, _ = stack
    code, fake, report = run_cli(stack, "3", broken_scenario(canary="3"))
    out = capsys.readouterr().out
    assert code == 1, out
    assert fake.seen == {("1", "3", 10.0, 50.0)}
    r = routing_of(routing)["intent"]
    assert (r.stable, r.canary, r.weight, r.shadow) == ("1", None, 0.0, 0.0)
    assert "ROLLED BACK intent: all traffic on stable 1" in out
    assert "failed gate shadow_agreement: canary agrees with stable on only 8.00% of 300 shadowed requests: " \
           "82.00 points below the required 90.00%" in out  # fmt: skip
    assert "failed gate label_shift: predicted labels shifted" in out
    assert report["result"] == "rolled_back" and [g["name"] for g in report["failed"]] == [
        "shadow_agreement", "label_shift"
    ]  # fmt: skip


def test_run_rolls_back_when_evidence_never_comes(stack, capsys):
    _, routing, _, _ = stack
    code, fake, report = run_cli(stack, "2", scenario(canary="2", n_canary=20))
    out = capsys.readouterr().out
    assert code == 1
    assert out.count("verdict: INCONCLUSIVE") == 2, "one extra bake, then give up"
    assert "inconclusive, baking again (1/1)" in out
    assert "not enough evidence" in report["reason"]
    assert routing_of(routing)["intent"].canary is None


def test_offline_gate_failure_never_moves_traffic(stack, capsys):
    tmp, routing, _, repo = stack
    write_evaluation(repo, "intent", "5", accuracy=0.60, macro_f1=0.58)
    before = routing.read_text()
    code, fake, report = run_cli(stack, "5", scenario(canary="5"))
    out = capsys.readouterr().out
    assert code == 1 and fake.asked == []
    assert routing.read_text() == before
    assert "NOT STARTED: offline gate failed: accuracy dropped 0.2150" in out
    assert report["offline"]["status"] == "fail"


def test_offline_gate_on_different_sets_is_a_config_error(stack, capsys):
    _, routing, _, repo = stack
    write_evaluation(repo, "intent", "6", accuracy=0.9, macro_f1=0.9, data="/elsewhere.jsonl")
    before = routing.read_text()
    code, _, _ = run_cli(stack, "6", scenario(canary="6"))
    assert code == 2 and routing.read_text() == before
    assert "not the same labelled set: data differs" in capsys.readouterr().err


def test_manual_commands(stack, capsys):
    tmp, routing, policy, repo = stack
    rf = ["--routing-file", str(routing)]
    assert (
        main(["start", *rf, "--model", "intent", "--canary-version", "2", "--weight", "5", "--shadow", "20"])
        == 0
    )
    assert "canary 2 at 5%, shadow 20%" in capsys.readouterr().out
    assert main(["start", *rf, "--model", "intent", "--canary-version", "3"]) == 2
    assert "a rollout of version 2 is under way" in capsys.readouterr().err
    assert main(["status", *rf, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["intent"]["weight"] == 5
    fake = FakePrometheus(broken_scenario(canary="2", window="1m"))
    argv = ["analyze", *rf, "--model", "intent", "--prometheus", "http://p.test", "--policy", str(policy),
            "--window", "1m", "--repository", str(repo), "--json"]  # fmt: skip
    assert main(argv, prometheus_transport=fake.transport) == 1
    analysis = json.loads(capsys.readouterr().out)
    assert analysis["verdict"] == "fail" and analysis["gates"][0]["name"] == "offline_eval"
    fake = FakePrometheus(scenario(canary="2", window="1m", n_canary=10))
    assert main(argv[:-1], prometheus_transport=fake.transport) == 3  # inconclusive, table output
    assert "verdict: INCONCLUSIVE" in capsys.readouterr().out
    assert main(["rollback", *rf, "--model", "intent"]) == 0
    assert routing_of(routing)["intent"].canary is None
    assert main(["rollback", *rf, "--model", "intent"]) == 0, "rollback is idempotent"
    assert main(["promote", *rf, "--model", "intent"]) == 2
    assert "no canary to promote" in capsys.readouterr().err
    assert (
        main(["start", *rf, "--model", "faq", "--canary-version", "2", "--stable", "1", "--weight", "100"])
        == 0
    )
    assert main(["promote", *rf, "--model", "faq"]) == 0
    assert routing_of(routing)["faq"].stable == "2"


def test_usage_and_config_errors_exit_2(stack, capsys, monkeypatch):
    tmp, routing, policy, _ = stack
    monkeypatch.delenv("KEFU_CANARY_ROUTING_FILE", raising=False)
    assert main(["status"]) == 2
    assert "--routing-file PATH, or --kubernetes" in capsys.readouterr().err
    assert main(["status", "--routing-file", str(tmp / "nope.yaml")]) == 2
    assert "cannot read the routing file" in capsys.readouterr().err
    bad_policy = tmp / "bad.yaml"
    bad_policy.write_text("steps: [10, 50]\n")
    argv = ["run", "--routing-file", str(routing), "--model", "intent", "--canary-version", "2"]
    assert main([*argv, "--policy", str(bad_policy), "--prometheus", "http://p.test"]) == 2
    assert "the last step must be 100" in capsys.readouterr().err
    assert main([*argv, "--policy", str(policy)]) == 2
    assert "need --prometheus" in capsys.readouterr().err
    routing.write_text("models:\n  intent: {stable: 1, weight: 10}\n")
    assert main(["status", "--routing-file", str(routing)]) == 2
    assert "need a canary version" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["start", "--routing-file", str(routing)])  # argparse: --model missing
    assert e.value.code == 2


def test_bake_progress_and_interrupt_rolls_back(tmp_path):
    routing = tmp_path / "routing.yaml"
    routing.write_text("models:\n  intent: {stable: 1}\n")
    policy = RolloutPolicy.model_validate(
        {"steps": [10, 100], "bake": "2m", "progress_every": 30, "gates": {"error_rate": {}}, "offline": None}
    )
    now = [0.0]
    lines: list[str] = []

    def sleep(s):
        now[0] += s
        if now[0] >= 100:
            raise KeyboardInterrupt

    fake = FakePrometheus(scenario())
    with PrometheusClient("http://p.test", transport=fake.transport) as prom:
        rollout = Rollout(LocalBackend(routing), policy, Analyzer(prom, policy.gates), out=lines.append,
                          sleep=sleep, clock=lambda: now[0])  # fmt: skip
        outcome = rollout.run("intent", "2")
    assert [ln for ln in lines if "baking" in ln] == [f"step 1/2: baking {s}/120 s" for s in (0, 30, 60, 90)]
    assert not outcome.promoted and outcome.reason.startswith("interrupted: KeyboardInterrupt")
    assert routing_of(routing)["intent"].canary is None, "a cancelled run leaves no canary serving"
    assert fake.asked == []


@pytest.mark.slow
def test_module_entry_point(tmp_path):
    routing = tmp_path / "routing.yaml"
    routing.write_text("models:\n  intent: {stable: 1, canary: 2, weight: 25}\n")
    cmd = [sys.executable, "-m", "services.canary", "status", "--routing-file", str(routing)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "intent: stable 1, canary 2 at 25%, shadow 0%, sticky True" in done.stdout


def test_shadow_only_first_step_catches_a_broken_canary_before_any_client_sees_it(stack, capsys):
    tmp, routing, policy, repo = stack
    policy.write_text(POLICY.replace("steps: [10, 100]", "steps: [0, 10, 100]"))
    code, fake, report = run_cli(stack, "3", broken_scenario())
    assert code == 1 and report["result"] == "rolled_back" and len(report["analyses"]) == 1
    assert {(c, w, s) for _, c, w, s in fake.seen} == {("3", 0, 50)}  # analysed in shadow only: weight 0
    assert "shadow only (no client sees it)" in capsys.readouterr().out
    assert routing_of(routing)["intent"].canary is None


def test_shadow_only_step_needs_a_shadow_share():
    with pytest.raises(ValueError, match="shadow only"):
        RolloutPolicy.model_validate({"steps": [0, 100], "shadow": 0})
    with pytest.raises(ValueError, match="strictly increase"):
        RolloutPolicy.model_validate({"steps": [10, 0, 100], "shadow": 10})
    policy = RolloutPolicy.model_validate({"steps": [{"weight": 0, "shadow": 100}, 100]})
    assert policy.shadow_of(policy.steps[0]) == 100


def test_demo_policy_is_valid_and_starts_in_shadow():
    from services.canary.demo import DEMO_POLICY

    policy = RolloutPolicy.load(DEMO_POLICY)
    assert [s.weight for s in policy.steps] == [0, 10, 100] and policy.shadow == 50
