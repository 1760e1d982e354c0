"""The network experiment of `make reliability`: two worker replicas behind the gateway, one cut off by nftables.

Three network namespaces created here, and deleted at the end: the gateway's (with Redis, the FAQ store and
the load generator on its loopback) and one per worker, each worker joined to the gateway's namespace by a veth
pair (both ends created inside the namespaces: nothing is added to the machine's own network, no traffic
leaves them):

    gateway ns  g1 10.251.1.1/30 ── veth ── w1 10.251.1.2/30  worker-1 ns
                g2 10.251.2.1/30 ── veth ── w2 10.251.2.2/30  worker-2 ns

The harness runs itself again inside the gateway's namespace (`ip netns exec`, `--inside`), starts the stack
there, puts the load on it and, at the fault time, loads an nftables table into worker-1's namespace that drops
every packet arriving on its veth (connections hang: the harshest cut, no RST to fail fast on); after the hold
the table is deleted. Needs root, `ip` (iproute2) and `nft` (nftables).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.load_stack import LoadStack

ROOT = Path(__file__).resolve().parents[1]
WORKER_PORTS = [8001, 9001, 8001, 9001]  # public + internal per worker; each in a namespace of its own
CUT_TABLE = "kefu_reliability_cut"
CUT_RULES = f"""table inet {CUT_TABLE} {{
    chain input {{ type filter hook input priority 0; policy accept; iifname != "lo" drop; }}
    chain output {{ type filter hook output priority 0; policy accept; oifname != "lo" drop; }}
}}
"""


def sh(*argv: str, input: str | None = None) -> None:
    proc = subprocess.run(argv, input=input, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {proc.stderr.strip()}")


def check_tools() -> None:
    missing = [tool for tool in ("ip", "nft") if shutil.which(tool) is None]
    if missing:
        raise RuntimeError(
            f"the network experiment needs {' and '.join(missing)} (Debian iproute2, nftables)"
        )
    if os.geteuid() != 0:
        raise RuntimeError("the network experiment creates network namespaces: it needs root")


class Namespaces:
    """The gateway's namespace and one per worker, linked by veth pairs; `delete()` removes all of it."""

    def __init__(self, tag: str, workers: int = 2):
        self.gateway = f"kefu-rel-{tag}-gw"
        self.workers = [f"kefu-rel-{tag}-w{i}" for i in range(1, workers + 1)]
        self.worker_hosts = [f"10.251.{i}.2" for i in range(1, workers + 1)]

    def create(self) -> None:
        for ns in (self.gateway, *self.workers):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        for i, ns in enumerate(self.workers, 1):
            g, w = f"g{i}", f"w{i}"
            sh("ip", "-n", self.gateway, "link", "add", g, "type", "veth", "peer", "name", w, "netns", ns)
            sh("ip", "-n", self.gateway, "addr", "add", f"10.251.{i}.1/30", "dev", g)
            sh("ip", "-n", ns, "addr", "add", f"10.251.{i}.2/30", "dev", w)
            sh("ip", "-n", self.gateway, "link", "set", g, "up")
            sh("ip", "-n", ns, "link", "set", w, "up")

    def delete(self) -> None:
        for ns in (self.gateway, *self.workers):
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True, check=False)


def cut(namespace: str):
    """The experiment: drop every packet on the worker's veth for `hold_s`, then lift the cut."""

    def experiment(stack: LoadStack, hold_s: float) -> dict:
        sh("ip", "netns", "exec", namespace, "nft", "-f", "-", input=CUT_RULES)
        time.sleep(hold_s)
        sh("ip", "netns", "exec", namespace, "nft", "delete", "table", "inet", CUT_TABLE)
        return {"cut_s": hold_s}

    return experiment


def inside(args) -> int:
    """In the gateway's namespace: the stack with its workers in theirs, the load, the cut, the figures."""
    from bench.reliability import run_fault

    workers = args.workers.split(",")
    hosts = args.worker_hosts.split(",")
    work = Path(args.work)
    stack = LoadStack(
        work / "stack",
        Path(args.repository),
        worker_hosts=hosts,
        worker_prefix=lambda i: ["ip", "netns", "exec", workers[i - 1]],
        worker_ports=WORKER_PORTS,
    )
    try:
        stack.start()
        timing = json.loads(args.timing)
        row = run_fault(stack, "netns_cut", cut(workers[0]), args.rate, timing, work)
    finally:
        stack.stop()
    Path(args.result).write_text(json.dumps(row), "utf-8")
    return 0


def run_netns_cut(repository: Path, rate: float, timing: dict, work: Path) -> dict:
    """Namespaces up, the harness inside the gateway's, namespaces down; the experiment's figures."""
    check_tools()
    work.mkdir(parents=True, exist_ok=True)
    ns = Namespaces(f"{os.getpid() % 100000}")
    result = work / "netns_cut.json"
    try:
        ns.create()
        argv = [
            "ip",
            "netns",
            "exec",
            ns.gateway,
            sys.executable,
            "-m",
            "bench.reliability_netns",
            "--inside",
        ]
        argv += ["--repository", str(repository), "--rate", str(rate), "--timing", json.dumps(timing)]
        argv += ["--work", str(work), "--result", str(result)]
        argv += ["--workers", ",".join(ns.workers), "--worker-hosts", ",".join(ns.worker_hosts)]
        proc = subprocess.run(argv, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)
        if proc.returncode != 0 or not result.exists():
            raise RuntimeError(f"the network experiment failed ({proc.returncode}); logs in {work}")
    finally:
        ns.delete()
    row = json.loads(result.read_text("utf-8"))
    return {"title": "worker replica cut off by nftables (network namespaces)", **row}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.reliability_netns", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--inside", action="store_true", help="(internal) run in the gateway's namespace")
    p.add_argument("--repository", default=str(ROOT / "model_repository"))
    p.add_argument("--rate", type=float, default=6.0)
    p.add_argument("--timing", default=json.dumps({"before": 10.0, "hold": 10.0, "after": 45.0}))
    p.add_argument("--work", default="")
    p.add_argument("--result", default="")
    p.add_argument("--workers", default="")
    p.add_argument("--worker-hosts", default="")
    args = p.parse_args(argv)
    if args.inside:
        return inside(args)
    import tempfile

    work = Path(args.work or tempfile.mkdtemp(prefix="kefu-netns-"))
    row = run_netns_cut(Path(args.repository), args.rate, json.loads(args.timing), work)
    print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
