"""The network experiment of `make reliability`: two worker replicas behind the gateway, one cut off by nftables.

Three network namespaces created here, and deleted at the end: the gateway's (with Redis, the FAQ store and
the load generator on its loopback) and one per worker, each worker joined to the gateway's namespace by a veth
pair (both ends created inside the namespaces: nothing is added to the machine's own network, no traffic
leaves them):

    gateway ns  g1 10.251.1.1/30 ── veth ── w1 10.251.1.2/30  worker-1 ns
                g2 10.251.2.1/30 ── veth ── w2 10.251.2.2/30  worker-2 ns

`python -m bench.reliability` runs itself again inside the gateway's namespace (`ip netns exec`), so every
experiment runs on this layout; `netns_cut` loads an nftables table into worker-1's namespace that drops every
packet in and out of its veth (connections hang: the harshest cut, no RST to fail fast on) and deletes it after
the hold. Needs root, `ip` (iproute2) and `nft` (nftables).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from bench.load_stack import LoadStack

ROOT = Path(__file__).resolve().parents[1]
WORKER_PORTS = [8001, 9001]  # public + internal port of each worker, each in a namespace of its own
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

    @property
    def names(self) -> str:
        return ",".join([self.gateway, *self.workers])

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


def netns_cut(stack: LoadStack, hold_s: float) -> dict:
    """Drop every packet on worker-1's veth for `hold_s` (nftables in its namespace), then lift the cut."""
    if not stack.worker_namespaces:
        raise RuntimeError(
            "netns_cut needs the workers in network namespaces (bench.reliability without --no-netns)"
        )
    namespace = stack.worker_namespaces[0]
    sh("ip", "netns", "exec", namespace, "nft", "-f", "-", input=CUT_RULES)
    try:
        time.sleep(hold_s)
    finally:
        sh("ip", "netns", "exec", namespace, "nft", "delete", "table", "inet", CUT_TABLE)
    return {"cut_s": hold_s}


def stack_in_namespaces(workdir: Path, repository: Path, names: str) -> LoadStack:
    """Inside the gateway's namespace: the stack, each worker started in its own namespace (`names`: the
    gateway's, then the workers', comma-separated)."""
    workers = names.split(",")[1:]
    return LoadStack(
        workdir,
        repository,
        worker_hosts=[f"10.251.{i}.2" for i in range(1, len(workers) + 1)],
        worker_prefix=lambda i: ["ip", "netns", "exec", workers[i - 1]],
        worker_ports=WORKER_PORTS * len(workers),
        worker_namespaces=workers,
    )
