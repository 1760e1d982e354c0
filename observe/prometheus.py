"""`make observe`: the real Prometheus (Debian package `prometheus`) on loopback, scraping the local stack that
`make run` starts (their internal ports: gateway 127.0.0.1:9000, worker 127.0.0.1:9001) and evaluating the chart's rule file.

    python -m observe.prometheus [--port 9090] [--scrape-interval 5s] [--worker 127.0.0.1:9001] ...

Every option is also a KEFU_OBSERVE_* variable. The config is written to `<storage>/prometheus.yml`, data to
`<storage>/data`; then this process becomes Prometheus (exec), so Ctrl-C stops it cleanly.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import shutil
import sys
from pathlib import Path

import yaml
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from observe.rules import RULES_FILE

_DURATION = r"^(\d+(ms|s|m|h|d))+$"


class ObserveSettings(BaseSettings):
    """Where the local Prometheus listens, what it scrapes and where it keeps its data."""

    model_config = SettingsConfigDict(env_prefix="KEFU_OBSERVE_", extra="forbid")

    host: str = Field("127.0.0.1", description="listen address; loopback only (production uses the chart)")
    port: int = Field(9090, ge=1, le=65535, description="listen port of the Prometheus web UI and API")
    gateway: str = Field(
        "127.0.0.1:9000", description="gateway internal host:port to scrape (/metrics); empty: none"
    )
    worker: str = Field(
        "127.0.0.1:9001", description="worker internal host:port to scrape (/metrics); empty: none"
    )
    scrape_interval: str = Field("5s", pattern=_DURATION, description="how often every target is scraped")
    evaluation_interval: str = Field("5s", pattern=_DURATION, description="how often rules are evaluated")
    storage: Path = Field(Path("runs/prometheus"), description="config and TSDB live here (data/ below it)")
    retention: str = Field("2d", pattern=_DURATION, description="how long local samples are kept")
    rules: Path = Field(
        RULES_FILE, description="rule file (the chart's; the same recording rules and alerts)"
    )
    binary: str = Field("prometheus", description="the Prometheus server executable")

    @field_validator("host")
    @classmethod
    def _loopback(cls, v: str) -> str:
        try:
            ok = v == "localhost" or ipaddress.ip_address(v).is_loopback
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"host must be a loopback address (127.0.0.1, ::1, localhost), got {v!r}")
        return v


def config(s: ObserveSettings) -> dict:
    """The prometheus.yml for `s`: one job per local service, plus Prometheus itself."""
    jobs = [("kefu-gateway", s.gateway), ("kefu-worker", s.worker), ("prometheus", f"{s.host}:{s.port}")]
    return {
        "global": {"scrape_interval": s.scrape_interval, "evaluation_interval": s.evaluation_interval},
        "rule_files": [str(Path(s.rules).resolve())],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [target], "labels": {"env": "local"}}]}
            for job, target in jobs
            if target
        ],
    }


def command(s: ObserveSettings) -> list[str]:
    """Write the config under `s.storage`; the Prometheus command line that uses it."""
    binary = shutil.which(s.binary)
    if not binary:
        raise FileNotFoundError(f"{s.binary} not found: apt-get install prometheus")
    if not Path(s.rules).is_file():
        raise FileNotFoundError(f"rule file {s.rules} not found")
    storage = Path(s.storage).resolve()
    (storage / "data").mkdir(parents=True, exist_ok=True)
    cfg = storage / "prometheus.yml"
    cfg.write_text(yaml.safe_dump(config(s), sort_keys=False), "utf-8")
    host = f"[{s.host}]" if ":" in s.host else s.host
    return [
        binary,
        f"--config.file={cfg}",
        f"--storage.tsdb.path={storage / 'data'}",
        f"--storage.tsdb.retention.time={s.retention}",
        f"--web.listen-address={host}:{s.port}",
        "--log.level=warn",
    ]


def main(argv: list[str] | None = None) -> int:
    fields = ObserveSettings.model_fields
    p = argparse.ArgumentParser(prog="python -m observe.prometheus", description=__doc__.split("\n\n")[0])
    for name, field in fields.items():
        p.add_argument("--" + name.replace("_", "-"), dest=name, default=None, help=field.description)
    args = p.parse_args(argv)
    try:
        settings = ObserveSettings(**{k: v for k, v in vars(args).items() if v is not None})
        cmd = command(settings)
    except (ValueError, FileNotFoundError) as e:
        print(f"observe: {e}", file=sys.stderr)
        return 2
    targets = ", ".join(t for t in (settings.gateway, settings.worker) if t)
    print(
        f"prometheus: http://{settings.host}:{settings.port}  scraping {targets} every {settings.scrape_interval}, "
        f"rules {settings.rules}, data {settings.storage}/data  (Ctrl-C stops it)",
        flush=True,
    )
    os.execv(cmd[0], cmd)  # Prometheus takes over this process: signals reach it directly


if __name__ == "__main__":
    sys.exit(main())
