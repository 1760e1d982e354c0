"""Run the gateway alone: `python -m services.gateway [--port 8000] [--internal-port 9000] [--workers '{...}']`.

Two ports, one process, shared state: the public port (the API, /healthz, a status-only /readyz, /docs in
development) and the internal port (/metrics, /healthz, the detailed /readyz) for Prometheus and probes. Both
refuse a request head over `max_header_bytes` with 431 before reading more (services/common/http_limits.py).
Overload (admission.py) is refused fast: the server takes at most `server_limit_concurrency` connections + requests
(uvicorn's `limit_concurrency`), with `backlog` and `keep_alive_s`; the admission gate answers 503 before any
other work when the process is full or its event loop lags.

Every core option is also a KEFU_GATEWAY_* variable (settings.py); the edge's (API keys, limits, Redis) are
KEFU_GATEWAY_* variables of `EdgeSettings` (edge/guard.py), the FAQ store's KEFU_FAQ_* (services/faq/settings.py).
All of them are read once, here, into one `config.Config` that the app is built from.
One server process: the FAQ store may be an embedded milvus-lite file, which only one process may open (run
several gateway replicas against `milvus-lite server` or Milvus, with KEFU_GATEWAY_REDIS_URL for shared state).
`python -m services.stack` starts the worker, the store and the gateway together.
"""

from __future__ import annotations

import json
import sys

from services.common.servers import ServerSpec, run_servers
from services.gateway.config import Config
from services.gateway.settings import GatewaySettings
from services.runtime.cli import overrides_of, settings_parser


def main(argv: list[str] | None = None) -> int:
    p = settings_parser(GatewaySettings, "python -m services.gateway", __doc__.split("\n\n")[0])
    args = p.parse_args(argv)
    overrides = overrides_of(args, GatewaySettings)
    if isinstance(overrides.get("workers"), str):
        try:
            overrides["workers"] = json.loads(overrides["workers"])
        except json.JSONDecodeError as e:
            p.error(f"--workers: not JSON ({e})")
    try:
        config = Config.from_env(**overrides)  # every section validated before the server starts
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    settings = config.gateway
    internal_host = settings.internal_host or settings.host
    if (internal_host, settings.internal_port) == (settings.host, settings.port):
        print(f"error: --internal-port: {settings.port} is the public port", file=sys.stderr)
        return 2
    from services.gateway.api.app import create_app_from_config

    app = create_app_from_config(config)
    print(
        f"gateway: http://{settings.host}:{settings.port}  internal (metrics, readiness): "
        f"http://{internal_host}:{settings.internal_port}  (workers {json.dumps(settings.workers)})",
        flush=True,
    )
    public = ServerSpec(app, settings.host, settings.port, lifespan="on")
    internal = ServerSpec(app.state.internal_app, internal_host, settings.internal_port)
    return run_servers(
        [public, internal],
        max_header_bytes=settings.max_header_bytes,
        log_level=settings.log_level,
        timeout_graceful_shutdown=10,
        proxy_headers=False,  # the edge reads X-Forwarded-For itself, from KEFU_GATEWAY_TRUSTED_PROXIES only
        # what comes before admission control (admission.py) is bounded too: connections + requests the server
        # takes (past it: its own 503), connections waiting to be accepted, idle keep-alive connections
        limit_concurrency=settings.server_limit_concurrency,
        backlog=settings.backlog,
        timeout_keep_alive=settings.keep_alive_s,
    )


if __name__ == "__main__":
    sys.exit(main())
