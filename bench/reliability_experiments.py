"""The faults of `make reliability`, each injected into a running `LoadStack` while the request mix runs.

An experiment is a function `(stack, hold_s) -> dict of notes`: it is called at the fault time, injects the
fault, keeps it for `hold_s` where that means something (a component down or hung), then undoes it the way
production would (the supervisor restarts a killed process, an operator lifts a cut), and returns what it did.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

from bench.load_stack import LoadStack, routing_text
from bench.reliability_netns import netns_cut

Experiment = Callable[[LoadStack, float], dict]


def engine_killed(stack: LoadStack, hold_s: float) -> dict:
    """SIGKILL one engine process of worker-1 (a model version's): the worker's watchdog replaces it."""
    pids = stack.engine_pids("worker-1")
    if not pids:
        raise RuntimeError("worker-1 has no engine process to kill")
    os.kill(pids[0], signal.SIGKILL)
    return {"killed_pid": pids[0], "engines": len(pids)}


def worker_killed(stack: LoadStack, hold_s: float) -> dict:
    """SIGKILL worker-1 (all its processes); after `hold_s` the supervisor (here: the harness) starts it again."""
    stack.procs["worker-1"].kill()
    time.sleep(hold_s)
    return {"down_s": hold_s, "restart_ready_s": round(stack.restart("worker-1"), 1)}


def worker_hung(stack: LoadStack, hold_s: float) -> dict:
    """SIGSTOP worker-1 (accepts connections, answers nothing) for `hold_s`, then SIGCONT."""
    stack.procs["worker-1"].signal_group(signal.SIGSTOP)
    time.sleep(hold_s)
    stack.procs["worker-1"].signal_group(signal.SIGCONT)
    return {"hung_s": hold_s}


def store_restarted(stack: LoadStack, hold_s: float) -> dict:
    """SIGKILL the FAQ store (milvus-lite server); started again on the same port and data after `hold_s`."""
    stack.procs["store"].kill()
    time.sleep(hold_s)
    return {"down_s": hold_s, "restart_ready_s": round(stack.restart("store"), 1)}


def redis_down(stack: LoadStack, hold_s: float) -> dict:
    """SIGKILL Redis (sessions, rate limits); started again, empty, after `hold_s`."""
    stack.procs["redis"].kill()
    time.sleep(hold_s)
    return {"down_s": hold_s, "restart_ready_s": round(stack.restart("redis"), 1)}


def hot_reload(stack: LoadStack, hold_s: float) -> dict:
    """A new sentiment version (a copy of the serving one) appears in the repository and every worker hot-loads
    it (explicit model control): the worker builds and warms it, then swaps it in for the old one."""
    started = time.monotonic()
    version = stack.add_version("sentiment")
    statuses = stack.reload("sentiment")
    return {"version": version, "statuses": statuses, "reload_s": round(time.monotonic() - started, 1)}


def canary_rollback(stack: LoadStack, hold_s: float) -> dict:
    """Intent's next version as a 50 % canary through the routing file, rolled back to stable after `hold_s`."""
    stack.set_routing(routing_text(stack.intent_stable, 50))
    time.sleep(hold_s)
    stack.set_routing(routing_text(stack.intent_stable))
    return {"canary_s": hold_s}


EXPERIMENTS: dict[str, tuple[str, Experiment]] = {
    "engine_killed": ("engine process of a worker killed", engine_killed),
    "worker_killed": ("worker replica killed, restarted by the supervisor", worker_killed),
    "worker_hung": ("worker replica hung (SIGSTOP), then resumed", worker_hung),
    "store_restarted": ("FAQ store killed and restarted", store_restarted),
    "redis_down": ("Redis down, then back (empty)", redis_down),
    "hot_reload": ("hot reload of a new sentiment version mid-load", hot_reload),
    "canary_rollback": ("intent canary at 50 %, rolled back mid-load", canary_rollback),
    "netns_cut": ("worker replica cut off by nftables (network namespaces)", netns_cut),
}
