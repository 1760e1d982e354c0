"""Child processes of `make run` (`services/stack/launcher.py`), kept alive: a crashed child is restarted with
exponential backoff while the others keep serving (degraded), and the console says so:

    >> faq-store exited (code -9); restarting in 1 s (attempt 2); the others keep serving meanwhile
    >> faq-store back after 3 s

    services = [Service("worker", argv, env, log, ready=worker_ready(url)), ...]
    for s in services: s.start(); wait_until(s, timeout_s)     # in order, each ready before the next
    return supervise(services)                                 # until a signal, or a child gives up

`Backoff`: the k-th crash within `window_s` waits `base_s * 2**(k-1)` s (capped at `cap_s`) before the restart;
the `max_crashes`-th crash within the window gives up: `supervise` returns 1 with the reason, and the launcher
stops the rest. Each child runs in a process group of its own, so what it started (the worker's engine
processes) is killed with it, after a crash too, before the restart binds the same ports again.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
ReadyCheck = Callable[[], "dict | None"]  # a dict once ready, else None (may raise httpx.HTTPError)


class StackError(RuntimeError):
    pass


class SignalGuard:
    """SIGINT / SIGTERM raise KeyboardInterrupt in the main thread, except inside `critical()` (starting a
    child: a child started but not recorded would outlive the stack), where they wait until it ends, and once
    `stopping` (a second Ctrl-C must not cut the clean-up short). Not a signal mask: children inherit masks."""

    def __init__(self) -> None:
        self.depth, self.pending, self.stopping = 0, False, False

    def install(self) -> None:
        signal.signal(signal.SIGINT, self.handler)
        signal.signal(signal.SIGTERM, self.handler)

    def handler(self, signum, frame) -> None:
        if self.stopping:
            return
        if self.depth:
            self.pending = True
            return
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def critical(self) -> Iterator[None]:
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
        if not self.depth and self.pending and not self.stopping:
            self.pending = False
            raise KeyboardInterrupt


GUARD = SignalGuard()


class Child:
    """One child in its own process group (so its own children stop with it)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path | None):
        self.name = name
        self.log = log
        out = open(log, "ab") if log else None  # noqa: SIM115 - closed in stop()
        self._out = out
        self._done = False
        self.proc = subprocess.Popen(
            argv,
            env=env,
            cwd=ROOT,
            start_new_session=True,
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout_s: float) -> None:
        """SIGTERM, then SIGKILL to whatever is left of the process group. Idempotent."""
        if self._done:
            return
        if self.alive():  # the leader shuts its own children down (the worker closes its engine processes)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                print(f"   {self.name} did not stop in {timeout_s:.0f} s: SIGKILL", flush=True)
        try:  # whatever is left of the group (engine processes of a worker killed mid-way)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        if self._out:
            self._out.close()
        self._done = True


@dataclass
class Backoff:
    """Restart delays of one child: the k-th crash within `window_s` waits `base_s * 2**(k-1)` s (at most
    `cap_s`); the `max_crashes`-th within the window gives up (`crashed` returns None)."""

    base_s: float = 1.0
    cap_s: float = 30.0
    max_crashes: int = 5
    window_s: float = 300.0
    clock: Callable[[], float] = time.monotonic
    crashes: deque = field(default_factory=deque)

    def crashed(self) -> float | None:
        """Records a crash now; the seconds to wait before the restart, or None: give up."""
        now = self.clock()
        self.crashes.append(now)
        while now - self.crashes[0] > self.window_s:
            self.crashes.popleft()
        if len(self.crashes) >= self.max_crashes:
            return None
        return min(self.cap_s, self.base_s * 2 ** (len(self.crashes) - 1))

    @property
    def attempt(self) -> int:
        """The number of the next start within the window (the first start is 1)."""
        return len(self.crashes) + 1


@dataclass
class Service:
    """A supervised child: how to start it, how to tell it is ready, and its restart state."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path | None
    ready: ReadyCheck
    backoff: Backoff = field(default_factory=Backoff)
    child: Child | None = None
    restart_at: float | None = None  # crashed: restart at this time
    recovering_since: float | None = None  # restarted, not ready yet

    def start(self) -> None:
        with GUARD.critical():  # a Ctrl-C between Popen and the assignment would leave a child nobody stops
            self.child = Child(self.name, self.argv, self.env, self.log)

    def stop(self, timeout_s: float) -> None:
        if self.child is not None:
            self.child.stop(timeout_s)
        self.restart_at = None

    def is_ready(self) -> dict | None:
        try:
            return self.ready()
        except httpx.HTTPError:
            return None


def wait_until(service: Service, timeout_s: float, every_s: float = 5.0) -> dict:
    """Polls the service's readiness with progress output; fails when its child exits or time runs out."""
    name, child = service.name, service.child
    started = time.monotonic()
    last = started
    while True:
        if not child.alive():
            hint = f" (see {child.log})" if child.log else ""
            raise StackError(f"{name} exited with code {child.proc.returncode} before it was ready{hint}")
        result = service.is_ready()
        if result is not None:
            print(f">> {name} ready after {time.monotonic() - started:.0f} s", flush=True)
            return result
        now = time.monotonic()
        if now - started > timeout_s:
            raise StackError(f"{name} not ready after {timeout_s:.0f} s")
        if now - last >= every_s:
            print(f"   ... waiting for {name} ({now - started:.0f} s)", flush=True)
            last = now
        time.sleep(0.5)


def supervise(
    services: list[Service],
    stop_timeout_s: float,
    *,
    poll_s: float = 0.5,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Keeps the started services running until interrupted (KeyboardInterrupt propagates); returns 1 when one
    of them crashed `max_crashes` times within its window (the caller stops the rest)."""
    while True:
        now = clock()
        for s in services:
            if s.restart_at is not None:
                if now >= s.restart_at:
                    s.restart_at, s.recovering_since = None, now
                    s.start()
                continue
            if s.child is None or s.child.alive():
                if s.recovering_since is not None and s.is_ready() is not None:
                    print(f">> {s.name} back after {clock() - s.recovering_since:.0f} s", flush=True)
                    s.recovering_since = None
                continue
            code = s.child.proc.returncode
            s.child.stop(stop_timeout_s)  # the rest of its process group, before the restart binds its ports
            delay = s.backoff.crashed()
            hint = f" (see {s.log})" if s.log else ""
            if delay is None:
                b = s.backoff
                print(
                    f"error: the {s.name} exited (code {code}) {b.max_crashes} times within {b.window_s:.0f} s; "
                    f"giving up, stopping the stack{hint}",
                    file=sys.stderr,
                    flush=True,
                )
                return 1
            print(
                f">> {s.name} exited (code {code}); restarting in {delay:g} s (attempt {s.backoff.attempt}); "
                f"the others keep serving meanwhile{hint}",
                flush=True,
            )
            s.restart_at, s.recovering_since = now + delay, None
        sleep(poll_s)
