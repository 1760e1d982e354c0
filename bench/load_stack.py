"""The stack under load, one process per component so that an experiment can kill, stop or restart each one:
Redis, the FAQ store (`milvus-lite server`), N worker replicas and the gateway, on free loopback ports.

Unlike `services.stack` (which stops everything when a child dies, as a launcher should), this harness
plays the supervisor itself: an experiment kills a component and, like the kubelet, starts it again.
The gateway gets every worker replica for every role (`KEFU_GATEWAY_WORKERS`), a routing file (intent's
serving version stable; a copy of it as the next version for the canary experiment), Redis for sessions / rate limits, its response
cache off (every request does the real work), a throw-away API key with scopes chat + admin, and the workers
explicit model control (hot reload). `worker_prefix` / `worker_hosts` put the workers elsewhere (the network
namespaces of bench/reliability_netns.py); by default everything is on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx
import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEMO_KB = ROOT / "data" / "faq_kb_demo" / "faq.jsonl"
MODELS = ("intent", "sentiment", "faq")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def source_repository(preferred: Path | None = None) -> Path:
    """`preferred` (default: model_repository/) when it holds a version of every model, else the committed
    defaults in models/shipped/ (a clean clone has no model_repository/ until `make run` or `make models`)."""
    for root in (preferred or ROOT / "model_repository", ROOT / "models" / "shipped"):
        if all(
            (root / m).is_dir() and any(d.is_dir() and d.name.isdigit() for d in (root / m).iterdir())
            for m in MODELS
        ):
            return root.resolve()
    raise RuntimeError(f"no models in {preferred} or models/shipped: run `make models`")


def prepare_repository(source: Path, repo: Path) -> tuple[Path, int]:
    """The serving (highest) version of every model, and intent's also as the next number (a copy, the canary
    of `canary_rollback`) with a version policy serving both; returns the repository and intent's stable version."""
    if repo.exists():
        shutil.rmtree(repo)
    for model in MODELS:
        (repo / model).mkdir(parents=True)
        versions = sorted(int(d.name) for d in (source / model).iterdir() if d.is_dir() and d.name.isdigit())
        if not versions:
            raise RuntimeError(f"{source / model} has no version (make models, or the shipped defaults)")
        shutil.copytree(source / model / str(versions[-1]), repo / model / str(versions[-1]))
        for entry in (source / model).iterdir():
            if not entry.is_dir():
                shutil.copy2(entry, repo / model / entry.name)
    stable = max(int(d.name) for d in (repo / "intent").iterdir() if d.is_dir())
    shutil.copytree(repo / "intent" / str(stable), repo / "intent" / str(stable + 1))
    config_path = repo / "intent" / "config.yaml"
    config = yaml.safe_load(config_path.read_text("utf-8"))
    config["version_policy"] = {"all": True, "latest": None, "specific": None}
    config_path.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), "utf-8")
    return repo, stable


def routing_text(stable: int, canary_weight: float | None = None) -> str:
    """The routing file: intent `stable` serves; with a weight, `stable + 1` is its canary."""
    intent: dict = {"stable": str(stable)}
    if canary_weight is not None:
        intent.update(canary=str(stable + 1), weight=canary_weight, sticky=True)
    return yaml.safe_dump({"models": {"intent": intent}}, sort_keys=False)


class Proc:
    """One component in a process group of its own; started again with the same command by `start()`."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path, ready: Callable[[], bool]):
        self.name, self.argv, self.env, self.log, self.ready = name, argv, env, log, ready
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=ROOT,
                start_new_session=True,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout_s: float) -> float:
        started = time.monotonic()
        while not self.ready():
            if not self.alive():
                tail = self.log.read_text("utf-8", "replace")[-1500:]
                raise RuntimeError(
                    f"{self.name} exited ({self.proc.returncode}) before it was ready:\n{tail}"
                )
            if time.monotonic() - started > timeout_s:
                raise RuntimeError(f"{self.name} not ready after {timeout_s:.0f} s (log {self.log})")
            time.sleep(0.2)
        return time.monotonic() - started

    def signal_group(self, sig: int) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        self.signal_group(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()

    def stop(self, timeout_s: float = 20) -> None:
        if self.alive():
            self.signal_group(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def processes(self) -> list[psutil.Process]:
        """The component's processes (the leader, when it runs in this namespace, and its descendants)."""
        if not self.alive():
            return []
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []


def _http_ok(url: str, check: Callable[[httpx.Response], bool] = lambda r: r.status_code == 200):
    def ready() -> bool:
        try:
            return check(httpx.get(url, timeout=2))
        except httpx.HTTPError:
            return False

    return ready


def _port_open(host: str, port: int):
    def ready() -> bool:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return True
        except OSError:
            return False

    return ready


class LoadStack:
    def __init__(
        self,
        workdir: Path,
        source_repository: Path = ROOT / "model_repository",
        replicas: int = 2,
        worker_hosts: Sequence[str] | None = None,
        worker_prefix: Callable[[int], list[str]] = lambda i: [],
        worker_ports: Sequence[int] | None = None,
        gateway_env: dict[str, str] | None = None,
        worker_namespaces: Sequence[str] = (),
    ):
        self.workdir = workdir
        self.worker_namespaces = list(worker_namespaces)  # each worker's network namespace, when it has one
        workdir.mkdir(parents=True, exist_ok=True)
        self.repository, self.intent_stable = prepare_repository(source_repository, workdir / "repository")
        self.key = "load-" + secrets.token_urlsafe(18)
        self.control_token = secrets.token_urlsafe(24)
        self.routing = workdir / "routing.yaml"
        self.routing.write_text(routing_text(self.intent_stable), "utf-8")
        keys = workdir / "api_keys.yaml"
        record = {
            "tenant": "load",
            "sha256": hashlib.sha256(self.key.encode()).hexdigest(),
            "scopes": ["chat", "admin"],
            "rate_per_s": 1e6,
            "burst": 1_000_000,
        }
        keys.write_text(yaml.safe_dump({"keys": [record]}), "utf-8")
        host = "127.0.0.1"
        self.redis_port, self.store_port = free_port(), free_port()
        self.port, self.internal_port = free_port(), free_port()
        self.url = f"http://{host}:{self.port}"
        self.internal_url = f"http://{host}:{self.internal_port}"
        base_env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "PYTHONWARNINGS": "ignore",
            "GLOG_minloglevel": "2",
        }
        log = lambda name: workdir / f"{name}.log"  # noqa: E731
        self.procs: dict[str, Proc] = {}
        redis_argv = [
            "redis-server",
            "--bind",
            host,
            "--port",
            str(self.redis_port),
            "--save",
            "",
            "--appendonly",
        ]
        self.procs["redis"] = Proc(
            "redis", [*redis_argv, "no"], base_env, log("redis"), _port_open(host, self.redis_port)
        )
        lite = Path(sys.executable).parent / "milvus-lite"
        store_argv = [str(lite), "server", "--data-dir", str(workdir / "milvus"), "--host", host]
        self.procs["store"] = Proc(
            "store",
            [*store_argv, "--port", str(self.store_port)],
            base_env,
            log("store"),
            _port_open(host, self.store_port),
        )
        worker_hosts = list(worker_hosts or [host] * replicas)
        self.worker_urls = []
        for i, whost in enumerate(worker_hosts, 1):
            port = worker_ports[2 * (i - 1)] if worker_ports else free_port()
            internal = worker_ports[2 * (i - 1) + 1] if worker_ports else free_port()
            url = f"http://{whost}:{port}"
            self.worker_urls.append(url)
            argv = [
                *worker_prefix(i),
                sys.executable,
                "-m",
                "services.worker",
                "--repository",
                str(self.repository),
            ]
            argv += ["--host", whost, "--port", str(port), "--internal-port", str(internal)]
            env = {
                **base_env,
                "KEFU_WORKER_MODEL_CONTROL_MODE": "explicit",
                "KEFU_WORKER_MODEL_CONTROL_TOKEN": self.control_token,
                "KEFU_WORKER_LOG_LEVEL": "warning",
            }
            self.procs[f"worker-{i}"] = Proc(
                f"worker-{i}", argv, env, log(f"worker-{i}"), _http_ok(f"{url}/v2/health/ready")
            )
        gw_env = {
            **base_env,
            "KEFU_GATEWAY_HOST": host,
            "KEFU_GATEWAY_PORT": str(self.port),
            "KEFU_GATEWAY_INTERNAL_PORT": str(self.internal_port),
            "KEFU_GATEWAY_WORKERS": json.dumps({m: self.worker_urls for m in MODELS}),
            "KEFU_GATEWAY_MODEL_REPOSITORY": str(self.repository),
            "KEFU_GATEWAY_FAQ_SEED_FILE": str(DEMO_KB),
            "KEFU_FAQ_URI": f"http://{host}:{self.store_port}",
            "KEFU_GATEWAY_REDIS_URL": f"redis://{host}:{self.redis_port}/0",
            "KEFU_GATEWAY_ROUTING_FILE": str(self.routing),
            "KEFU_GATEWAY_CACHE_ENABLED": "false",
            "KEFU_GATEWAY_API_KEYS_FILE": str(keys),
            "KEFU_GATEWAY_LOG_LEVEL": "warning",
            **(gateway_env or {}),
        }
        ready = _http_ok(f"{self.internal_url}/readyz", lambda r: r.json().get("status") == "ready")
        self.procs["gateway"] = Proc(
            "gateway", [sys.executable, "-m", "services.gateway"], gw_env, log("gateway"), ready
        )

    # ── life cycle ───────────────────────────────────────────────────────────────────────────────────────
    def start(self, timeout_s: float = 600) -> None:
        order = ["redis", "store", *[n for n in self.procs if n.startswith("worker-")], "gateway"]
        workers = [n for n in order if n.startswith("worker-")]
        for name in order:
            if name in workers[1:]:
                continue  # started with the first one: they load their models in parallel
            for n in workers if name == workers[0] else [name]:
                self.procs[n].start()
            for n in workers if name == workers[0] else [name]:
                took = self.procs[n].wait_ready(timeout_s)
                print(f"   {n} ready after {took:.1f} s", flush=True)

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            proc.stop()

    def restart(self, name: str, timeout_s: float = 300) -> float:
        """Start a killed component again (what a supervisor does); seconds until it was ready."""
        proc = self.procs[name]
        if proc.alive():
            proc.kill()
        proc.start()
        return proc.wait_ready(timeout_s)

    # ── what experiments touch ───────────────────────────────────────────────────────────────────────────
    def engine_pids(self, worker: str) -> list[int]:
        """The worker's engine processes (children of its server process that run a model)."""
        procs = self.procs[worker].processes()
        cmdlines = [(p.pid, " ".join(p.cmdline())) for p in procs[1:]]
        return [pid for pid, cmd in cmdlines if "spawn_main" in cmd and "resource_tracker" not in cmd]

    def reload(self, model: str) -> list[int]:
        """Hot reload `model` on every worker (explicit model control); the HTTP statuses."""
        headers = {"authorization": f"Bearer {self.control_token}"}
        return [
            httpx.post(f"{url}/v2/repository/models/{model}/load", headers=headers, timeout=120).status_code
            for url in self.worker_urls
        ]

    def add_version(self, model: str) -> int:
        """A new version of `model` in the repository: a copy of its highest one; its number."""
        versions = sorted(int(d.name) for d in (self.repository / model).iterdir() if d.name.isdigit())
        shutil.copytree(
            self.repository / model / str(versions[-1]), self.repository / model / str(versions[-1] + 1)
        )
        return versions[-1] + 1

    def set_routing(self, text: str) -> None:
        tmp = self.routing.with_suffix(".tmp")
        tmp.write_text(text, "utf-8")
        tmp.replace(self.routing)  # atomic: the gateway's watcher never reads half a file

    def present_faqs(self, ids: Sequence[str]) -> set[str]:
        """Which of these FAQ ids the store has now (admin API; each 200 = present)."""
        headers = {"authorization": f"Bearer {self.key}"}
        found = set()
        with httpx.Client(base_url=self.url, headers=headers, timeout=10) as client:
            for faq_id in ids:
                for _ in range(3):
                    r = client.get(f"/admin/faq/faqs/{faq_id}")
                    if r.status_code in (200, 404):
                        break
                    time.sleep(1)
                if r.status_code == 200:
                    found.add(faq_id)
        return found

    def resources(self) -> dict:
        """Resident memory (MB) and open file descriptors of every component's processes together."""
        rss, fds = 0, 0
        for proc in self.procs.values():
            for p in proc.processes():
                try:
                    rss += p.memory_info().rss
                    fds += p.num_fds()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
        return {"rss_mb": round(rss / 2**20, 1), "fds": fds}
