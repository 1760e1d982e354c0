"""The skip gate: a test run fails when any test (or test module) is skipped, unless the skip is in the
documented allow-list `tests/allowed_skips.toml`.

A skip hides a missing dependency (no Redis, no Prometheus, no milvus-lite server, no real Milvus): the run looks
green while those tests never ran. tests/conftest.py installs the gate for every run (`make test`, `.ci/run`);
`KEFU_TEST_ALLOW_SKIPS=1` turns it off for a local run on a machine without those servers (CI never sets it).

Allow-list entries (TOML, `[[skip]]` tables): `nodeid` (an fnmatch pattern on the test id), `reason` (a
substring of the skip reason) and `why` (required: why this skip is acceptable). An xfail is not a skip;
deselected tests (`-k`, `-m "not slow"`) are not skips either.
"""

from __future__ import annotations

import fnmatch
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ALLOW_LIST = Path(__file__).with_name("allowed_skips.toml")
OPT_OUT = "KEFU_TEST_ALLOW_SKIPS"


@dataclass(frozen=True)
class AllowedSkip:
    nodeid: str
    reason: str
    why: str

    def matches(self, nodeid: str, reason: str) -> bool:
        return fnmatch.fnmatchcase(nodeid, self.nodeid) and self.reason in reason


def load_allow_list(path: Path = ALLOW_LIST) -> list[AllowedSkip]:
    """The entries of `path`; a malformed file or an entry without its `why` is a usage error, not a pass."""
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise pytest.UsageError(f"skip allow-list {path}: {e}") from e
    unknown = set(data) - {"skip"}
    if unknown:
        raise pytest.UsageError(f"skip allow-list {path}: unknown top-level key(s) {sorted(unknown)}")
    entries = []
    for i, entry in enumerate(data.get("skip", []), start=1):
        fields = {"nodeid", "reason", "why"}
        if not isinstance(entry, dict) or set(entry) != fields:
            raise pytest.UsageError(f"skip allow-list {path}: entry {i} must have exactly {sorted(fields)}")
        if not all(isinstance(entry[f], str) and entry[f].strip() for f in fields):
            raise pytest.UsageError(
                f"skip allow-list {path}: entry {i}: every field must be a non-empty string"
            )
        entries.append(AllowedSkip(entry["nodeid"], entry["reason"], entry["why"]))
    return entries


def skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (path, line, "Skipped: reason")
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


class SkipGate:
    """Collects skips that the allow-list does not name and fails the session over them."""

    def __init__(self, allowed: list[AllowedSkip], source: Path = ALLOW_LIST):
        self.allowed = allowed
        self.source = source
        self.unlisted: list[tuple[str, str]] = []

    def _check(self, report) -> None:
        if not report.skipped or hasattr(report, "wasxfail"):
            return
        reason = skip_reason(report)
        if not any(a.matches(report.nodeid, reason) for a in self.allowed):
            self.unlisted.append((report.nodeid, reason))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._check(report)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        self._check(report)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.unlisted and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not self.unlisted:
            return
        terminalreporter.section("skip gate: skips not in the allow-list", sep="=", red=True, bold=True)
        for nodeid, reason in self.unlisted:
            terminalreporter.line(f"SKIPPED {nodeid}: {reason}")
        terminalreporter.line(
            f"{len(self.unlisted)} unlisted skip(s) fail this run: install what they need (see .ci/run), or add "
            f"an entry with its reason to {self.source.name}; {OPT_OUT}=1 turns the gate off for a local run."
        )


def install(config: pytest.Config, path: Path = ALLOW_LIST) -> SkipGate | None:
    """Register the gate for this run unless the opt-out variable is set."""
    if os.environ.get(OPT_OUT, "") not in ("", "0"):
        return None
    gate = SkipGate(load_allow_list(path), path)
    config.pluginmanager.register(gate, "kefu-skip-gate")
    return gate
