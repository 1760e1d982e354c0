"""The whole local stack on one machine: `python -m services.stack --repository model_repository`.

1. the inference worker (`python -m services.worker`, port 8001; its internal port 9001 for /metrics)
   serving intent, sentiment and faq;
2. the FAQ store: a `milvus-lite server` process on a free loopback port, data in `runs/stack/milvus/`
   (`--faq-store embedded`: a milvus-lite file inside the gateway process instead; a set `KEFU_FAQ_URI` wins);
3. the gateway (`python -m services.gateway`, port 8000; its internal port 9000 for /metrics and the detailed
   /readyz), which fills the store with the demo knowledge base
   (`data/faq_kb_demo/faq.jsonl`) when the collection is empty, or re-embeds when the collection's encoder
   version differs from the worker's;
4. waits for each to be ready (progress every few seconds), then prints the URLs (internal ones too) and, in
   development mode with the shipped demo keys file only, a ready-to-paste `curl` with the demo key.

Ctrl-C (SIGINT) or SIGTERM stops the gateway, the FAQ store, then the worker: SIGTERM to each (the worker closes its engine
processes itself), then SIGKILL after `--stop-timeout` seconds to whatever is left of its process group (each
child runs in a process group of its own, so nothing it started outlives it).
A child that dies once the stack is up is restarted (`services/stack/supervisor.py`): after
`--restart-backoff` s, doubling per crash up to `--restart-backoff-max`, while the others keep serving (the
gateway answers degraded: without the store `faq_down`, without the worker 503 `upstreams_unavailable`); the
console says which child exited, with its code, when it restarts and when it is back. More than
`--max-restarts` crashes of one child within `--restart-window` s stop the stack with exit code 1, as does a
child that exits before it was first ready. Only loopback by default.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import sys
from collections.abc import Mapping
from pathlib import Path

import httpx

from services.stack.supervisor import GUARD, Backoff, Service, StackError, supervise, wait_until

ROOT = Path(__file__).resolve().parents[2]
DEMO_KB = ROOT / "data" / "faq_kb_demo" / "faq.jsonl"
DEMO_KEY = "kefu-demo-key-change-me"
MODELS = ("intent", "sentiment", "faq")


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_open(host: str, port: int):
    """A `wait_until` check: ready once something accepts connections on the port."""

    def check() -> dict | None:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
        except OSError:
            return None
        return {}

    return check


def worker_ready(url: str, timeout_s: float = 2.0):
    def check():
        r = httpx.get(f"{url}/v2/health/ready", timeout=timeout_s)
        return {"ok": True} if r.status_code == 200 else None

    return check


def gateway_ready(url: str, timeout_s: float = 5.0):
    def check():
        r = httpx.get(f"{url}/readyz", timeout=timeout_s)
        body = r.json()
        return body if body.get("status") == "ready" else None

    return check


def curl_example(url: str, key_header: str = f"'X-API-Key: {DEMO_KEY}'") -> str:
    body = json.dumps({"session_id": "demo-1", "text": "下单后多久发货？"}, ensure_ascii=False)
    return (
        f"curl -s -X POST {url}/v1/chat -H {key_header} "
        f"-H 'Content-Type: application/json' -d {shlex.quote(body)}"
    )


def access_lines(env: Mapping[str, str], gateway_url: str) -> list[str]:
    """What the summary says about credentials and docs: the demo key and a `curl` using it only in development
    mode with the shipped keys file; with its own keys file or in production, a `curl` with a placeholder."""
    keys_file = env.get("KEFU_GATEWAY_API_KEYS_FILE", "")
    production = env.get("KEFU_GATEWAY_MODE", "development") == "production"
    flag = env.get("KEFU_GATEWAY_DOCS_ENABLED", "").strip().lower()
    docs = flag in ("1", "true", "yes", "on") if flag else not production
    docs_line = f"  API docs  {gateway_url}/docs" if docs else "  API docs  off (KEFU_GATEWAY_DOCS_ENABLED)"
    if keys_file or production:
        keys = f"API keys  {keys_file or 'the shipped file (production refuses it)'}"
        mode = "production" if production else "development"
        return [
            docs_line,
            f"  {keys}  ({mode} mode; no demo key)",
            "",
            "try (with one of your keys in $KEFU_API_KEY):",
            "  " + curl_example(gateway_url, '"X-API-Key: $KEFU_API_KEY"'),
        ]
    return [
        docs_line,
        f"  API key   {DEMO_KEY}  (tenant demo, scopes chat + admin; development only)",
        "",
        "try:",
        "  " + curl_example(gateway_url),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m services.stack", description=__doc__.split("\n\n")[0])
    p.add_argument("--repository", type=Path, default=Path("model_repository"), help="model repository")
    p.add_argument("--host", default="127.0.0.1", help="bind address of both servers")
    p.add_argument("--port", type=int, default=8000, help="gateway port")
    p.add_argument("--worker-port", type=int, default=8001, help="worker port")
    p.add_argument(
        "--internal-port", type=int, default=9000, help="gateway internal port (/metrics, detailed /readyz)"
    )
    p.add_argument("--worker-internal-port", type=int, default=9001, help="worker internal port (/metrics)")
    p.add_argument("--worker-processes", type=int, default=1, help="worker server processes")
    p.add_argument(
        "--backend", default=None, help="worker engine (paddle | onnxruntime); default: the worker's"
    )
    p.add_argument("--data-dir", type=Path, default=Path("runs/stack"), help="milvus-lite data and logs")
    p.add_argument(
        "--faq-store",
        choices=("server", "embedded"),
        default="server",
        help="server: a `milvus-lite server` process on loopback (its searches do not compete with the "
        "gateway's Python for one GIL: +25%% chat throughput at c=8 on 2 cores); embedded: a milvus-lite file "
        "inside the gateway process. Ignored when KEFU_FAQ_URI is set",
    )
    p.add_argument("--kb", type=Path, default=DEMO_KB, help="knowledge base loaded into an empty store")
    p.add_argument(
        "--ready-timeout", type=float, default=600, help="seconds each server may take to be ready"
    )
    p.add_argument("--stop-timeout", type=float, default=15, help="seconds between SIGTERM and SIGKILL")
    p.add_argument(
        "--restart-backoff",
        type=float,
        default=1.0,
        help="seconds before restarting a crashed child (doubles)",
    )
    p.add_argument("--restart-backoff-max", type=float, default=30.0, help="cap of the restart delay (s)")
    p.add_argument(
        "--max-restarts",
        type=int,
        default=5,
        help="restarts of one child within --restart-window; then give up",
    )
    p.add_argument("--restart-window", type=float, default=300.0, help="seconds over which crashes count")
    p.add_argument("--quiet", action="store_true", help="children's output to <data-dir>/*.log, not here")
    p.add_argument(
        "--extra-env", action="append", default=[], help="NAME=VALUE for both children (repeatable)"
    )
    args = p.parse_args(argv)

    repo = args.repository.resolve()
    missing = [m for m in MODELS if not (repo / m / "config.yaml").is_file()]
    if missing:
        print(f"error: {repo} has no {', '.join(missing)} model (run `make models`)", file=sys.stderr)
        return 2
    internal_port, worker_internal_port = (
        args.internal_port,
        args.worker_internal_port,
    )  # `make observe` scrapes
    for port in (args.worker_port, args.port, internal_port, worker_internal_port):
        if not port_free(args.host, port):
            print(f"error: {args.host}:{port} is already in use (another stack running?)", file=sys.stderr)
            return 2
    data = (args.data_dir if args.data_dir.is_absolute() else ROOT / args.data_dir).resolve()
    data.mkdir(parents=True, exist_ok=True)
    worker_url = f"http://{args.host}:{args.worker_port}"
    gateway_url = f"http://{args.host}:{args.port}"
    gateway_internal = f"http://{args.host}:{internal_port}"
    worker_internal = f"http://{args.host}:{worker_internal_port}"
    env = dict(os.environ)
    env.update(kv.split("=", 1) for kv in args.extra_env)
    lite_server = args.faq_store == "server" and "KEFU_FAQ_URI" not in env
    if lite_server:
        lite_port = free_port(args.host)
        env["KEFU_FAQ_URI"] = f"http://{args.host}:{lite_port}"
    env.setdefault("KEFU_FAQ_URI", str(data / "faq.db"))
    gateway_env = {
        **env,
        "KEFU_GATEWAY_HOST": args.host,
        "KEFU_GATEWAY_PORT": str(args.port),
        "KEFU_GATEWAY_INTERNAL_PORT": str(internal_port),
        "KEFU_GATEWAY_WORKERS": json.dumps({m: [worker_url] for m in MODELS}),
        "KEFU_GATEWAY_MODEL_REPOSITORY": str(repo),
        "KEFU_GATEWAY_FAQ_SEED_FILE": str(args.kb.resolve()),
    }
    log = (lambda name: data / f"{name}.log") if args.quiet else (lambda name: None)

    def backoff() -> Backoff:
        return Backoff(
            args.restart_backoff, args.restart_backoff_max, args.max_restarts + 1, args.restart_window
        )

    worker_argv = [sys.executable, "-m", "services.worker", "--repository", str(repo), "--host", args.host]
    worker_argv += ["--port", str(args.worker_port), "--processes", str(args.worker_processes)]
    worker_argv += ["--internal-port", str(worker_internal_port)]
    if args.backend:
        worker_argv += ["--backend", args.backend]
    # after a restart the supervision loop asks readiness with short timeouts (it watches the others meanwhile)
    worker = Service("worker", worker_argv, env, log("worker"), worker_ready(worker_url, 1.0), backoff())
    services = [worker]
    if lite_server:
        lite_argv = [str(Path(sys.executable).parent / "milvus-lite"), "server", "--data-dir"]
        lite_argv += [str(data / "milvus"), "--host", args.host, "--port", str(lite_port)]
        services.append(
            Service("faq-store", lite_argv, env, log("faq-store"), port_open(args.host, lite_port), backoff())
        )
    gateway_argv = [sys.executable, "-m", "services.gateway"]
    gateway = Service(
        "gateway", gateway_argv, gateway_env, log("gateway"), gateway_ready(gateway_internal, 1.0), backoff()
    )
    services.append(gateway)
    started: list[Service] = []

    def stop() -> None:
        if GUARD.stopping:
            return
        GUARD.stopping = True  # from here on, signals are ignored: a second Ctrl-C must not cut this short
        print("\n>> stopping: " + ", then ".join(s.name for s in reversed(started)), flush=True)
        for service in reversed(started):
            service.stop(args.stop_timeout)
        print(">> stopped", flush=True)

    GUARD.install()
    try:
        print(f">> starting the worker on {worker_url} (loads and warms intent, sentiment, faq)", flush=True)
        worker.start()
        started.append(worker)
        wait_until(worker, args.ready_timeout)
        if lite_server:
            print(f">> starting the FAQ store: milvus-lite server on {env['KEFU_FAQ_URI']}", flush=True)
            services[1].start()
            started.append(services[1])
            wait_until(services[1], args.ready_timeout)
        print(f">> starting the gateway on {gateway_url} (FAQ store {env['KEFU_FAQ_URI']})", flush=True)
        gateway.start()
        started.append(gateway)
        first = Service(
            gateway.name, [], {}, gateway.log, gateway_ready(gateway_internal), child=gateway.child
        )
        ready = wait_until(first, args.ready_timeout)
        kb = ready["knowledge_base"]
        lite = f" (milvus-lite server, data {data}/milvus)" if lite_server else ""
        lines = [
            "",
            f"  gateway   {gateway_url}  (internal: {gateway_internal}/metrics, {gateway_internal}/readyz)",
            f"  worker    {worker_url}/v2  (internal: {worker_internal}/metrics)",
            f"  FAQ store {env['KEFU_FAQ_URI']}{lite}  (encoder {kb['encoder']}, thresholds {kb['thresholds']})",
            *access_lines(gateway_env, gateway_url),
            "",
            f"A crashed part is restarted (backoff {args.restart_backoff:g} s doubling to {args.restart_backoff_max:g} s, "
            f"at most {args.max_restarts} restarts in {args.restart_window:g} s). Ctrl-C stops everything.",
        ]
        print("\n".join(lines), flush=True)
        return supervise(started, args.stop_timeout)
    except KeyboardInterrupt:
        return 0
    except StackError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        stop()


if __name__ == "__main__":
    sys.exit(main())
