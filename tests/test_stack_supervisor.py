"""`make run`'s supervision (services/stack/supervisor.py) with real child processes: a child killed with
SIGKILL is restarted after its backoff while the others keep running, the console says so, and a child that
keeps crashing makes the supervisor give up with the reason. Time is a fake clock advanced by the loop's
sleeps, so the backoff is checked logically, not by waiting."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest

from services.stack.supervisor import Backoff, Service, supervise

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


class Stop(Exception):
    """Ends `supervise` from a test (in `make run`, Ctrl-C raises KeyboardInterrupt the same way)."""


class FakeTime:
    """`clock` and `sleep` for `supervise`: each sleep advances the fake clock by its length (and lets real
    processes run for a few ms); `until` ends the loop, as does a real-time limit."""

    def __init__(self, until, limit_s: float = 60):
        self.now, self.until, self.deadline = 0.0, until, time.monotonic() + limit_s

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s
        time.sleep(0.01)
        if self.until(self):
            raise Stop
        if time.monotonic() > self.deadline:
            raise AssertionError("the supervisor did not get there in time")


def test_backoff_doubles_up_to_its_cap_and_gives_up_after_max_crashes_in_the_window():
    t = [0.0]
    b = Backoff(base_s=1, cap_s=5, max_crashes=5, window_s=60, clock=lambda: t[0])
    assert [b.crashed() for _ in range(4)] == [1, 2, 4, 5]
    assert b.crashed() is None  # the 5th crash within 60 s
    t[0] = 1000.0  # an hour of quiet: old crashes no longer count
    b2 = Backoff(base_s=1, cap_s=5, max_crashes=3, window_s=60, clock=lambda: t[0])
    assert b2.crashed() == 1 and b2.attempt == 2
    t[0] += 61
    assert b2.crashed() == 1  # the first crash left the window
    t[0] += 1
    assert b2.crashed() == 2 and b2.crashed() is None


def test_a_killed_child_is_restarted_after_its_backoff_and_the_others_keep_running(capsys):
    fake = FakeTime(until=lambda f: False)
    store = Service(
        "faq-store", SLEEPER, dict(os.environ), None, lambda: {}, Backoff(1, 30, 5, 300, fake.clock)
    )
    gateway = Service(
        "gateway", SLEEPER, dict(os.environ), None, lambda: {}, Backoff(1, 30, 5, 300, fake.clock)
    )
    services = [store, gateway]
    for s in services:
        s.start()
    first_store, first_gateway = store.child.proc.pid, gateway.child.proc.pid
    try:
        os.kill(first_store, signal.SIGKILL)
        store.child.proc.wait()
        restarted_at: list[float] = []

        def until(f: FakeTime) -> bool:
            if store.child is not None and store.child.proc.pid != first_store and not restarted_at:
                restarted_at.append(f.now)
            return bool(restarted_at) and store.recovering_since is None  # back (ready) after the restart

        fake.until = until
        with pytest.raises(Stop):
            supervise(services, 5, poll_s=0.25, clock=fake.clock, sleep=fake.sleep)
        out = capsys.readouterr().out
        assert ">> faq-store exited (code -9); restarting in 1 s (attempt 2)" in out
        assert ">> faq-store back after" in out
        assert restarted_at and 1.0 <= restarted_at[0] <= 1.5  # waited its 1 s backoff, no longer
        assert store.child.alive() and store.child.proc.pid != first_store
        assert gateway.child.alive() and gateway.child.proc.pid == first_gateway  # untouched meanwhile
        assert "gateway" not in out
    finally:
        for s in services:
            s.stop(5)
    assert not store.child.alive() and not gateway.child.alive()


def test_a_child_that_keeps_crashing_makes_the_supervisor_give_up(capsys):
    fake = FakeTime(until=lambda f: False)
    crasher = [sys.executable, "-c", "raise SystemExit(3)"]
    bad = Service("worker", crasher, dict(os.environ), None, lambda: {}, Backoff(1, 2, 3, 300, fake.clock))
    ok = Service("gateway", SLEEPER, dict(os.environ), None, lambda: {}, Backoff(1, 2, 3, 300, fake.clock))
    for s in (bad, ok):
        s.start()
    try:
        bad.child.proc.wait()
        assert supervise([bad, ok], 5, poll_s=0.25, clock=fake.clock, sleep=fake.sleep) == 1
        out, err = capsys.readouterr()
        assert ">> worker exited (code 3); restarting in 1 s (attempt 2)" in out
        assert ">> worker exited (code 3); restarting in 2 s (attempt 3)" in out
        assert "error: the worker exited (code 3) 3 times within 300 s; giving up" in err
        assert ok.child.alive()  # the launcher stops the rest, not supervise
    finally:
        for s in (bad, ok):
            s.stop(5)


def test_a_crashed_worker_leaves_no_process_of_its_group_behind(tmp_path):
    """The worker's engine processes are in its process group: a SIGKILL of the leader must not orphan them
    (they would hold memory, and the restarted worker could not bind their ports)."""
    fake = FakeTime(until=lambda f: False)
    pid_file = tmp_path / "engine.pid"
    code = (
        "import pathlib, subprocess, sys, time; "
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
        f"t = pathlib.Path({str(pid_file)!r} + '.tmp'); t.write_text(str(p.pid)); t.rename({str(pid_file)!r}); "
        "time.sleep(120)"
    )
    worker = Service("worker", [sys.executable, "-c", code], dict(os.environ), None, lambda: None)
    worker.backoff = Backoff(1, 2, 5, 300, fake.clock)
    worker.start()
    try:
        deadline = time.monotonic() + 30
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        engine = int(pid_file.read_text())
        assert _alive(engine)
        os.kill(worker.child.proc.pid, signal.SIGKILL)
        worker.child.proc.wait()
        fake.until = lambda f: worker.restart_at is not None  # the crash was handled, restart pending
        with pytest.raises(Stop):
            supervise([worker], 5, poll_s=0.25, clock=fake.clock, sleep=fake.sleep)
        assert not _alive(engine), "engine process orphaned by the crash"
    finally:
        worker.stop(5)


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
