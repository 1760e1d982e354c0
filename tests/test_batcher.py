"""The dynamic batcher: batch forming, token budget, admission, deadlines, cancellation, failure isolation."""

import asyncio
import threading
import time

import pytest

from services.worker.batcher import BatcherConfig, DynamicBatcher
from services.worker.errors import DeadlineExceeded, InferenceFailed, Overloaded


class Recorder:
    """A run_batch that records its batches; optionally sleeps, blocks on an event, or fails."""

    def __init__(self, delay_s=0.0, fail_if=None, gate: threading.Event | None = None, drop_one=False):
        self.batches, self.delay_s, self.fail_if, self.gate, self.drop_one = (
            [],
            delay_s,
            fail_if,
            gate,
            drop_one,
        )

    def __call__(self, items):
        if self.gate is not None:
            self.gate.wait(5)
        if self.delay_s:
            time.sleep(self.delay_s)
        self.batches.append(list(items))
        if self.fail_if and any(self.fail_if(i) for i in items):
            raise RuntimeError("boom")
        out = [f"out:{i}" for i in items]
        return out[:-1] if self.drop_one else out


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


def make(rec, **cfg):
    return DynamicBatcher(rec, BatcherConfig(**cfg))


def test_results_map_one_to_one_and_full_batches_go_at_once():
    async def main():
        rec = Recorder()
        b = make(rec, max_batch_size=4, max_queue_delay_ms=200)
        b.start()
        t0 = time.monotonic()
        results = await asyncio.gather(*(b.submit(i, cost=3) for i in range(4)))
        elapsed = time.monotonic() - t0
        await b.close()
        return rec, results, elapsed

    rec, results, elapsed = run(main())
    assert results == [f"out:{i}" for i in range(4)]
    assert [sorted(x) for x in rec.batches] == [[0, 1, 2, 3]]
    assert elapsed < 0.15  # a full batch does not wait for the delay


def test_delay_is_timed_from_the_first_waiting_request():
    async def main():
        rec = Recorder()
        b = make(rec, max_batch_size=8, max_queue_delay_ms=100, adaptive_delay=False)
        b.start()
        t0 = time.monotonic()
        first = asyncio.create_task(b.submit("a", 3))
        await asyncio.sleep(0.06)
        second = asyncio.create_task(b.submit("b", 3))
        await asyncio.gather(first, second)
        elapsed = time.monotonic() - t0
        await b.close()
        return rec, elapsed

    rec, elapsed = run(main())
    assert rec.batches == [["a", "b"]]
    assert 0.09 <= elapsed < 0.15  # ~100 ms after "a", not 100 ms after "b"


def test_token_budget_groups_similar_lengths():
    async def main():
        gate = threading.Event()
        rec = Recorder(gate=gate)
        b = make(rec, max_batch_size=8, max_queue_delay_ms=0, max_batch_tokens=130)
        b.start()
        blocker = asyncio.create_task(b.submit("blocker", 1))
        await asyncio.sleep(0.02)  # the engine is busy with "blocker"; the rest queue up
        costs = {"s1": 5, "L1": 60, "s2": 6, "L2": 62, "s3": 4}
        tasks = [asyncio.create_task(b.submit(k, v)) for k, v in costs.items()]
        await asyncio.sleep(0.02)
        gate.set()
        await asyncio.gather(blocker, *tasks)
        await b.close()
        return rec

    rec = run(main())
    assert rec.batches[0] == ["blocker"]
    assert sorted(rec.batches[1]) == ["s1", "s2", "s3"]  # the oldest (s1) plus its short peers
    assert sorted(rec.batches[2]) == ["L1", "L2"]  # 2 x 62 <= 130


def test_an_entry_over_the_token_budget_runs_alone_instead_of_hanging():
    async def main():
        rec = Recorder()
        b = make(rec, max_batch_size=8, max_queue_delay_ms=1, max_batch_tokens=10)
        b.start()
        result = await b.submit("huge", cost=500)
        await b.close()
        return rec, result

    rec, result = run(main())
    assert result == "out:huge" and rec.batches == [["huge"]]


def test_full_queue_is_refused_at_once():
    async def main():
        gate = threading.Event()
        b = make(Recorder(gate=gate), max_batch_size=1, max_queue_delay_ms=0, capacity=3)
        b.start()
        running = asyncio.create_task(b.submit("running", 1))
        await asyncio.sleep(0.02)
        waiting = [asyncio.create_task(b.submit(i, 1)) for i in range(3)]
        await asyncio.sleep(0.01)
        t0 = time.monotonic()
        with pytest.raises(Overloaded, match="queue full") as e:
            await b.submit("one too many", 1)
        refused_in = time.monotonic() - t0
        gate.set()
        await asyncio.gather(running, *waiting)
        await b.close()
        return refused_in, e.value

    refused_in, error = run(main())
    assert refused_in < 0.05 and error.retry_after_s >= 1


def test_deadline_expires_while_queued_and_never_runs():
    async def main():
        gate = threading.Event()
        rec = Recorder(gate=gate)
        b = make(rec, max_batch_size=1, max_queue_delay_ms=0)
        b.start()
        running = asyncio.create_task(b.submit("running", 1))
        await asyncio.sleep(0.02)
        with pytest.raises(DeadlineExceeded):
            await b.submit("late", 1, timeout_s=0.05)
        gate.set()
        await running
        after = await b.submit("next", 1)
        await b.close()
        return rec, after

    rec, after = run(main())
    assert after == "out:next"
    assert ["late"] not in rec.batches


def test_cancelled_requests_are_skipped():
    async def main():
        gate = threading.Event()
        rec = Recorder(gate=gate)
        b = make(rec, max_batch_size=4, max_queue_delay_ms=0)
        b.start()
        running = asyncio.create_task(b.submit("running", 1))
        await asyncio.sleep(0.02)
        gone = asyncio.create_task(b.submit("gone", 1))
        kept = asyncio.create_task(b.submit("kept", 1))
        await asyncio.sleep(0.01)
        gone.cancel()
        gate.set()
        await asyncio.gather(running, kept)
        await b.close()
        return rec, gone

    rec, gone = run(main())
    assert gone.cancelled()
    assert all("gone" not in batch for batch in rec.batches)
    assert ["kept"] in rec.batches


def test_a_failing_batch_fails_only_its_own_requests():
    async def main():
        gate = threading.Event()
        rec = Recorder(gate=gate, fail_if=lambda i: i == "bad")
        b = make(rec, max_batch_size=2, max_queue_delay_ms=0, max_batch_tokens=100)
        b.start()
        first = asyncio.create_task(b.submit("first", 1))
        await asyncio.sleep(0.02)
        bad = asyncio.create_task(b.submit("bad", 1))
        peer = asyncio.create_task(b.submit("peer", 1))
        await asyncio.sleep(0.01)
        gate.set()
        results = await asyncio.gather(first, bad, peer, return_exceptions=True)
        later = await b.submit("later", 1)  # the loop lives on
        await b.close()
        return results, later

    (first, bad, peer), later = run(main())
    assert first == "out:first" and later == "out:later"
    assert isinstance(bad, InferenceFailed) and isinstance(peer, InferenceFailed)
    assert "boom" in bad.message


def test_output_count_mismatch_is_an_error_not_a_misalignment():
    async def main():
        b = make(Recorder(drop_one=True), max_batch_size=2, max_queue_delay_ms=50)
        b.start()
        results = await asyncio.gather(b.submit("a", 1), b.submit("b", 1), return_exceptions=True)
        await b.close()
        return results

    results = run(main())
    assert all(isinstance(r, InferenceFailed) and "1 outputs for 2 inputs" in r.message for r in results)


def test_close_drains_in_flight_entries():
    async def main():
        b = make(Recorder(delay_s=0.05), max_batch_size=2, max_queue_delay_ms=0)
        b.start()
        tasks = [asyncio.create_task(b.submit(i, 1)) for i in range(5)]
        await asyncio.sleep(0.01)
        await b.close(drain=True)
        with pytest.raises(Overloaded, match="unloading"):
            await b.submit("after close", 1)
        return await asyncio.gather(*tasks)

    assert run(main()) == [f"out:{i}" for i in range(5)]


def test_adaptive_delay_lone_requests_do_not_wait_but_bursts_do():
    async def main():
        rec = Recorder()
        b = make(rec, max_batch_size=8, max_queue_delay_ms=100)
        b.start()
        t0 = time.monotonic()
        await b.submit("lone", 1)
        lone_latency = time.monotonic() - t0
        await asyncio.sleep(0.15)  # quiet again
        t0 = time.monotonic()
        first = asyncio.create_task(b.submit("burst-1", 1))
        await asyncio.sleep(0)  # "burst-1" is dispatched at once: nothing arrived recently
        more = [asyncio.create_task(b.submit(f"burst-{i}", 1)) for i in (2, 3)]
        await asyncio.gather(first, *more)
        await b.close()
        return rec, lone_latency

    rec, lone_latency = run(main())
    assert lone_latency < 0.05  # did not wait the 100 ms delay
    assert rec.batches[0] == ["lone"] and rec.batches[1] == ["burst-1"]
    assert sorted(rec.batches[2]) == ["burst-2", "burst-3"]  # arrived together: waited for each other
