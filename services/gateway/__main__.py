"""Run the gateway alone: `python -m services.gateway [--port 8000] [--workers '{"intent": [...], ...}']`.

Every core option is also a KEFU_GATEWAY_* variable (settings.py); the edge's (API keys, limits, Redis) are
KEFU_GATEWAY_* variables of `EdgeSettings` (edge.py), the FAQ store's KEFU_FAQ_* (services/faq/settings.py).
One server process: the FAQ store may be an embedded milvus-lite file, which only one process may open (run
several gateway replicas against `milvus-lite server` or Milvus, with KEFU_GATEWAY_REDIS_URL for shared state).
`python -m services.gateway.stack` starts the worker, the store and the gateway together.
"""

from __future__ import annotations

import json
import os
import sys

import uvicorn

from services.gateway.edge import EdgeSettings
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
        settings = GatewaySettings(**overrides)  # validates before the server starts
        EdgeSettings()  # refuses placeholder secrets in production, before the server starts
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for key, value in overrides.items():  # the server process rebuilds the same settings from the environment
        text = json.dumps(value) if isinstance(value, dict) else str(value)
        os.environ[f"KEFU_GATEWAY_{key.upper()}"] = text
    print(
        f"gateway: http://{settings.host}:{settings.port}  (workers {json.dumps(settings.workers)})",
        flush=True,
    )
    uvicorn.run(
        "services.gateway.app:create_app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=10,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
