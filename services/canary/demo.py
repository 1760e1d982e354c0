"""`make canary-demo`: two canary rollouts of the intent model on the local stack, under continuous client traffic.

    python -m services.canary.demo [--out runs/canary-demo] [--no-train] [--bake 30]

1. models (`demo_models.py`), in a copy of the model repository under `--out`: a retrained intent v2 and a
   broken v3 (v2 exported with its labels permuted); the intent model's version policy serves every version;
2. the local stack (`services.stack`: worker + milvus-lite FAQ store + gateway) with a routing file
   (intent stable 1) and the answer cache off, and a local Prometheus (`observe.prometheus`) scraping the
   gateway every second, all on free loopback ports;
3. client traffic all along (`traffic.py`: /v1/chat sessions and /v1/intent batches; every failure counted);
4. `python -m services.canary run` for v2 (shadow only, then 10% of sessions, gates, promotion), then for v3
   (shadow only: caught by the agreement gate and rolled back before any client sees it), with the demo policy
   (`demo_policy.yaml`: the default gates, bakes of seconds);
5. the analyses of both runs, and exit 0 only if v2 was promoted, v3 rolled back with the shadow agreement
   gate failed, and no client request failed. Everything it started is stopped on the way out.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from services.canary.analysis import Analysis, GateResult, Status
from services.canary.demo_models import (
    INTENT_DATA,
    ROOT,
    build_v2,
    build_v3,
    prepare_repository,
    routing_text,
    source_repository,
)
from services.canary.traffic import Traffic

DEMO_POLICY = Path(__file__).resolve().parent / "demo_policy.yaml"
DEMO_KEY = "canary-demo-key-0001"


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A child in its own process group, output to a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str] | None = None):
        self.name, self.log = name, log
        self._out = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout_s: float = 30) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        self._out.close()


def wait_ready(name: str, url: str, proc: Proc, timeout_s: float, ok=lambda r: r.status_code == 200) -> None:
    started = last = time.monotonic()
    while True:
        if not proc.alive():
            raise RuntimeError(f"{name} exited with code {proc.proc.returncode} (log {proc.log})")
        try:
            if ok(httpx.get(url, timeout=5)):
                say(f"{name} ready after {time.monotonic() - started:.0f} s")
                return
        except (httpx.HTTPError, ValueError):
            pass
        if time.monotonic() - started > timeout_s:
            raise RuntimeError(f"{name} not ready after {timeout_s:.0f} s (log {proc.log})")
        if time.monotonic() - last >= 10:
            say(f"   ... waiting for {name} ({time.monotonic() - started:.0f} s)")
            last = time.monotonic()
        time.sleep(0.5)


def keys_file(path: Path) -> Path:
    """A development key file with a rate limit the demo's traffic stays under (the shipped key allows 20/s)."""
    digest = hashlib.sha256(DEMO_KEY.encode()).hexdigest()
    keys = [{"name": "canary demo", "tenant": "canary-demo", "sha256": digest, "scopes": ["chat"],
             "rate_per_s": 10000, "burst": 10000}]  # fmt: skip
    path.write_text(yaml.safe_dump({"keys": keys}), "utf-8")
    return path


def demo_policy(path: Path, bake: float) -> Path:
    policy = yaml.safe_load(DEMO_POLICY.read_text("utf-8"))
    policy["bake"] = f"{bake:g}s"
    path.write_text(yaml.safe_dump(policy, sort_keys=False), "utf-8")
    return path


def rollout(
    version: str, routing: Path, policy: Path, prometheus: str, repo: Path, report: Path
) -> tuple[int, dict]:
    """`python -m services.canary run` for intent `version`, its output streamed with a prefix."""
    argv = [sys.executable, "-m", "services.canary", "run", "--routing-file", str(routing), "--model", "intent",
            "--canary-version", version, "--policy", str(policy), "--prometheus", prometheus,
            "--repository", str(repo), "--report", str(report)]  # fmt: skip
    say(f"rollout of intent v{version}: {' '.join(argv[1:])}")
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        print(f"   [v{version}] {line.rstrip()}", flush=True)
    rc = proc.wait()
    data = json.loads(report.read_text("utf-8")) if report.is_file() else {}
    return rc, data


def last_analysis(report: dict) -> str:
    if not report.get("analyses"):
        return "(no online analysis ran)"
    a = report["analyses"][-1]
    analysis = Analysis(a["model"], a["stable"], a["canary"], a["window"])
    for g in a["gates"]:
        analysis.results.append(
            GateResult(g["name"], Status(g["status"]), g["observed"], g["threshold"], g["message"])
        )
    return analysis.table()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m services.canary.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "canary-demo", help="work folder (rebuilt)")
    p.add_argument("--source", type=Path, default=ROOT / "model_repository", help="default models")
    p.add_argument("--no-train", action="store_true", help="v2 = v1's weights re-packaged (tests)")
    p.add_argument("--bake", type=float, default=30, help="seconds of traffic per policy step")
    p.add_argument("--clients", type=int, default=4, help="concurrent traffic clients")
    p.add_argument("--ready-timeout", type=float, default=600, help="seconds the stack may take to start")
    args = p.parse_args(argv)
    started = time.monotonic()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("repo", "prometheus", "v2.json", "v3.json"):
        shutil.rmtree(out / stale, ignore_errors=True) if (out / stale).is_dir() else (out / stale).unlink(
            True
        )

    say("1/5 model versions")
    repo = prepare_repository(source_repository(args.source), out / "repo", out=say)
    build_v2(repo, out / "train-v2", train=not args.no_train, out=say)
    build_v3(repo, out=say)
    routing = out / "routing.yaml"
    routing.write_text(routing_text("1"), "utf-8")
    policy = demo_policy(out / "policy.yaml", args.bake)

    gw_port, worker_port, prom_port = free_port(), free_port(), free_port()
    gw_internal, worker_internal = free_port(), free_port()  # /metrics is on the internal ports only
    gateway, prometheus = f"http://127.0.0.1:{gw_port}", f"http://127.0.0.1:{prom_port}"
    procs: list[Proc] = []
    traffic: Traffic | None = None
    try:
        say(f"2/5 local stack: gateway {gateway}, worker :{worker_port} (intent v1, v2, v3; sentiment; faq)")
        extra = {
            "KEFU_GATEWAY_ROUTING_FILE": str(routing),
            "KEFU_GATEWAY_CACHE_ENABLED": "false",  # every request reaches a model: the gates see all traffic
            "KEFU_GATEWAY_API_KEYS_FILE": str(keys_file(out / "api_keys.yaml")),
            "KEFU_GATEWAY_LOG_LEVEL": "warning",
        }
        stack = [sys.executable, "-m", "services.stack", "--repository", str(repo), "--port", str(gw_port),
                 "--worker-port", str(worker_port), "--data-dir", str(out / "stack"), "--quiet",
                 "--internal-port", str(gw_internal), "--worker-internal-port", str(worker_internal)]  # fmt: skip
        stack += [f"--extra-env={k}={v}" for k, v in extra.items()]
        procs.append(Proc("stack", stack, out / "stack.log"))
        wait_ready("stack (worker, FAQ store, gateway)", f"{gateway}/readyz", procs[-1], args.ready_timeout,
                   ok=lambda r: r.json().get("status") == "ready")  # fmt: skip
        say(f"3/5 Prometheus {prometheus} scraping the gateway every second")
        prom = [sys.executable, "-m", "observe.prometheus", "--port", str(prom_port), "--gateway",
                f"127.0.0.1:{gw_internal}", "--worker", f"127.0.0.1:{worker_internal}", "--scrape-interval", "1s",
                "--evaluation-interval", "15s", "--storage", str(out / "prometheus")]  # fmt: skip
        procs.append(Proc("prometheus", prom, out / "prometheus.log"))
        wait_ready("prometheus", f"{prometheus}/-/ready", procs[-1], 60)

        say(f"4/5 client traffic: {args.clients} clients (/v1/chat sessions, /v1/intent batches)")
        texts = [json.loads(line)["text"] for f in ("train.jsonl", "dev.jsonl")
                 for line in (INTENT_DATA / f).read_text("utf-8").splitlines() if line.strip()]  # fmt: skip
        traffic = Traffic(gateway, DEMO_KEY, texts, clients=args.clients, progress=say).start()
        time.sleep(5)
        say("5/5 rollouts")
        rc2, v2 = rollout("2", routing, policy, prometheus, repo, out / "v2.json")
        rc3, v3 = rollout("3", routing, policy, prometheus, repo, out / "v3.json")
        time.sleep(2)  # traffic after the rollback, on stable
    except (RuntimeError, FileNotFoundError, OSError) as e:
        say(f"FAILED: {e}")
        return 1
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    finally:
        if traffic is not None:
            traffic.stop()
        for proc in reversed(procs):
            proc.stop()
    stats = traffic.stats()
    v3_failed = {g["name"] for g in v3.get("failed", [])}
    checks = {
        "v2 promoted": rc2 == 0 and v2.get("result") == "promoted",
        "v3 rolled back": rc3 == 1 and v3.get("result") == "rolled_back",
        "v3 caught by the shadow agreement gate": "shadow_agreement" in v3_failed,
        "no client request failed": stats["failed"] == 0 and stats["total"] > 0,
        "no client answered by v3": stats["versions"].get("3", 0) == 0,
    }
    print("\n" + "=" * 100)
    print(f"v2 (retrained): {str(v2.get('result', 'no result')).upper()}  ({v2.get('reason', '')})")
    if v2.get("offline"):
        print(f"offline gate: {v2['offline']['status'].upper()}: {v2['offline']['message']}")
    print(last_analysis(v2))
    print("-" * 100)
    print(f"v3 (labels permuted): {str(v3.get('result', 'no result')).upper()}")
    print(last_analysis(v3))
    print("-" * 100)
    print(f"client traffic: {stats['total']} requests, {stats['failed']} failed, answered by intent versions "
          f"{dict(sorted(stats['versions'].items()))}; {time.monotonic() - started:.0f} s in all")  # fmt: skip
    for name, ok in checks.items():
        print(f"  [{'x' if ok else ' '}] {name}")
    (out / "summary.json").write_text(json.dumps({"checks": checks, "traffic": stats}, indent=2) + "\n")
    print(f"result: {'PASS' if all(checks.values()) else 'FAIL'} (reports: {out}/v2.json, {out}/v3.json)")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
