"""Hot reload of the routing file: rename and ConfigMap symlink swaps, invalid files rejected, and no request lost
while threads and asyncio tasks hammer decide() during rewrites."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from pathlib import Path

import pytest

from services.canary.backends import write_atomic
from services.canary.routing import RoutingError
from services.canary.watcher import RoutingWatcher

GOOD_1 = "models:\n  intent: {stable: 1}\n"
GOOD_2 = "models:\n  intent: {stable: 1, canary: 2, weight: 50, shadow: 20}\n"
GOOD_3 = "models:\n  intent: {stable: 2}\n"
INVALID = "models:\n  intent: {stable: 1, weight: 500}\n"


def test_first_load_must_succeed(tmp_path):
    with pytest.raises(RoutingError, match="cannot read the routing file"):
        RoutingWatcher(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text(INVALID)
    with pytest.raises(RoutingError, match="less than or equal to 100"):
        RoutingWatcher(tmp_path / "bad.yaml")


def test_reload_on_rename_and_invalid_file_keeps_previous(tmp_path, caplog):
    path = tmp_path / "routing.yaml"
    path.write_text(GOOD_1)
    w = RoutingWatcher(path)
    assert w.table.decide("intent", "s").version == "1"
    assert w.check() is False  # unchanged

    write_atomic(path, GOOD_2)
    assert w.check() is True
    assert w.table.config.models["intent"].canary == "2"

    with caplog.at_level(logging.ERROR):
        write_atomic(path, INVALID)
        assert w.check() is False
        assert w.check() is False  # same bad content: reported once
    assert w.table.config.models["intent"].canary == "2", "the previous table keeps serving"
    assert w.rejected == 1 and "less than or equal to 100" in w.last_error
    assert sum("routing file rejected" in r.message for r in caplog.records) == 1

    path.unlink()  # vanished between swaps: keep serving
    assert w.check() is False and w.table.config.models["intent"].canary == "2"

    path.write_text(GOOD_3)  # in-place rewrite (not atomic) also picked up
    assert w.check() is True
    assert w.table.decide("intent", "s").version == "2" and w.last_error is None
    assert w.reloads == 2


def _configmap_update(mount: Path, text: str, n: int) -> None:
    """What the kubelet does: write a new timestamped folder, then atomically re-point the `..data` symlink."""
    folder = mount / f"..2025_01_01_00_00_{n:02d}"
    folder.mkdir()
    (folder / "routing.yaml").write_text(text)
    tmp_link = mount / "..data_tmp"
    tmp_link.symlink_to(folder.name)
    os.replace(tmp_link, mount / "..data")


def test_configmap_symlink_swap(tmp_path):
    mount = tmp_path / "config"
    mount.mkdir()
    _configmap_update(mount, GOOD_1, 0)
    (mount / "routing.yaml").symlink_to("..data/routing.yaml")
    w = RoutingWatcher(mount / "routing.yaml")
    _configmap_update(mount, GOOD_2, 1)
    assert w.check() is True and w.table.config.models["intent"].weight == 50
    _configmap_update(mount, INVALID, 2)
    assert w.check() is False and w.table.config.models["intent"].weight == 50
    _configmap_update(mount, GOOD_3, 3)
    assert w.check() is True and w.table.config.models["intent"].stable == "2"


def _rewrites(path: Path, stop: threading.Event, counts: dict) -> None:
    """Cycle good, invalid, half-written and good files as fast as the watcher can notice them."""
    contents = [GOOD_2, INVALID, GOOD_1, GOOD_2[:17], GOOD_3, GOOD_2]
    i = 0
    while not stop.is_set():
        text = contents[i % len(contents)]
        if i % 2:
            write_atomic(path, text)
        else:
            path.write_text(text)  # non-atomic: the watcher may catch it half written
        counts["writes"] += 1
        i += 1
        time.sleep(0.03)


@pytest.mark.slow
def test_hot_reload_under_concurrent_decide_threads(tmp_path):
    path = tmp_path / "routing.yaml"
    path.write_text(GOOD_1)
    counts = {"writes": 0}
    stop = threading.Event()
    with RoutingWatcher(path, interval_s=0.002, settle_s=0.005) as w:
        served = [0] * 4
        errors: list[BaseException] = []

        def hammer(k: int) -> None:
            n = 0
            try:
                while not stop.is_set():
                    route = w.table.decide("intent", f"s{n % 997}")
                    assert route.version in ("1", "2"), route
                    assert route.role in ("stable", "canary")
                    n += 1
                    if n % 200 == 0:
                        time.sleep(0)  # a real request does I/O; let the writer and the watcher run
            except BaseException as e:  # surfaced below: a lost request fails the test
                errors.append(e)
            served[k] = n

        threads = [threading.Thread(target=hammer, args=(k,)) for k in range(4)]
        writer = threading.Thread(target=_rewrites, args=(path, stop, counts))
        for t in [*threads, writer]:
            t.start()
        try:
            deadline = time.monotonic() + 60
            while counts["writes"] < 18 and time.monotonic() < deadline:  # three cycles of the six contents
                time.sleep(0.05)
        finally:
            stop.set()
            for t in [*threads, writer]:
                t.join()
        assert not errors, errors[:3]
        assert all(n > 1000 for n in served), served
        assert counts["writes"] >= 18, counts
        assert w.reloads >= 3, (w.reloads, counts)
        assert w.rejected >= 1, "the invalid file in the middle was seen and refused"
        write_atomic(path, GOOD_3)
        deadline = time.monotonic() + 2
        while w.table.config.models["intent"].stable != "2" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert w.table.decide("intent", "s").version == "2"


@pytest.mark.slow
@pytest.mark.asyncio
async def test_hot_reload_under_concurrent_decide_tasks(tmp_path):
    path = tmp_path / "routing.yaml"
    path.write_text(GOOD_2)
    stop = threading.Event()
    counts = {"writes": 0}
    with RoutingWatcher(path, interval_s=0.002, settle_s=0.005) as w:
        writer = threading.Thread(target=_rewrites, args=(path, stop, counts))
        writer.start()

        async def request(i: int) -> str:
            await asyncio.sleep(0)
            route = w.table.decide("intent", f"session-{i % 50}")
            await asyncio.sleep(0.0005)  # the request "in flight" while the table may swap
            return route.version

        answered = 0
        try:
            deadline = time.monotonic() + 60
            while counts["writes"] < 18 and time.monotonic() < deadline:  # three cycles of the six contents
                results = await asyncio.gather(*(request(i) for i in range(200)))
                assert set(results) <= {"1", "2"}, set(results)
                answered += len(results)
                await asyncio.sleep(0.002)  # a real server waits on sockets: the writer thread gets the GIL
        finally:
            stop.set()
            writer.join()
    assert counts["writes"] >= 18 and answered >= 2000, (counts, answered)
    assert w.reloads >= 3 and w.rejected >= 1
