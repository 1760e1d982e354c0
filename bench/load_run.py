"""One phase of load: headless locust (bench/load_mix.py) at an offered rate, its records in a JSONL file.

`start_load` returns the running locust process (an experiment injects its fault meanwhile); `run_load` waits for
it. `prefix` runs locust elsewhere (`ip netns exec <ns>`). The offered rate is `users x per-user rate`, each
user at most `USER_RATE` requests/s, so a slow answer delays only its own user (the others keep the rate).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.load_records import Record, read_records

ROOT = Path(__file__).resolve().parents[1]
LOCUSTFILE = ROOT / "bench" / "load_mix.py"
USER_RATE = 0.5  # requests/s per simulated client


def locust_argv(url: str, rate_rps: float, duration_s: float) -> tuple[list[str], int, float]:
    users = max(1, math.ceil(rate_rps / USER_RATE))
    argv = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", url]
    # users start over one sending interval (spawn rate = the offered rate), so their requests interleave
    # instead of arriving in bursts of `users` at once
    argv += ["-u", str(users), "-r", f"{max(rate_rps, 1.0):g}", "-t", f"{max(1, round(duration_s))}s"]
    argv += ["--only-summary", "--loglevel", "WARNING", "--stop-timeout", "10", "--exit-code-on-error", "0"]
    return argv, users, rate_rps / users


def start_load(
    url: str, key: str, rate_rps: float, duration_s: float, records: Path, prefix: list[str] | None = None
) -> subprocess.Popen:
    argv, users, per_user = locust_argv(url, rate_rps, duration_s)
    env = {
        **os.environ,
        "LOAD_API_KEY": key,
        "LOAD_RECORDS": str(records),
        "LOAD_USER_RATE": f"{per_user:.6f}",
        "PYTHONPATH": str(ROOT),
        "PYTHONWARNINGS": "ignore",
    }
    log = open(records.with_suffix(".locust.log"), "ab")  # noqa: SIM115 - the child keeps it open
    try:
        return subprocess.Popen(
            [*(prefix or []), *argv], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    finally:
        log.close()


def wait_load(proc: subprocess.Popen, records: Path, timeout_s: float) -> list[Record]:
    try:
        rc = proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"locust did not finish in {timeout_s:.0f} s") from None
    except BaseException:  # interrupted: no load generator left behind
        proc.kill()
        proc.wait()
        raise
    if rc != 0 or not records.exists():
        log = records.with_suffix(".locust.log")
        tail = log.read_text("utf-8", "replace")[-2000:] if log.exists() else ""
        raise RuntimeError(f"locust failed ({rc}):\n{tail}")
    return read_records(records)


def run_load(
    url: str, key: str, rate_rps: float, duration_s: float, records: Path, prefix: list[str] | None = None
) -> tuple[list[Record], float]:
    """Records of `duration_s` of load at `rate_rps`, and the epoch second the load began."""
    began = time.time()
    proc = start_load(url, key, rate_rps, duration_s, records, prefix)
    return wait_load(proc, records, duration_s + 60), began
