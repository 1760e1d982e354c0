"""The dynamic batcher: batch forming, token budget, admission, deadlines, cancellation, failure isolation.

Timing is checked logically: the batcher runs on a `ManualClock` that only the test moves, so "did not wait"
means "went without the clock moving" and "waited 100 ms" means "went when the clock reached 100 ms, not
before", whatever the machine's load."""

import asyncio
import threading
import time

import pytest

from services.worker.batcher import BatcherConfig, DynamicBatcher, MonotonicClock
from services.worker.errors import DeadlineExceeded, InferenceFailed, Overloaded


class ManualClock:
    """A batcher clock that stands still until `advance()`; its timeouts expire when it passes them."""

    def __init__(self, start: float = 1000.0):
        self.t = start
        self._armed: list[_ManualTimeout] = []

    def now(self) -> float:
        return self.t

    def timeout_at(self, when: float) -> "_ManualTimeout":
        return _ManualTimeout(self, when)

    def advance(self, seconds: float) -> None:
        self.t = round(self.t + seconds, 9)  # 0.06 + 0.039 + 0.001 is 0.1 here, as it is on paper
        for timeout in [t for t in self._armed if t.when <= self.t]:
            timeout.expire()


class _ManualTimeout:
    """`asyncio.timeout(None)` that the manual clock expires (the same TimeoutError semantics)."""

    def __init__(self, clock: ManualClock, when: float):
        self.clock, self.when, self._cm = clock, when, asyncio.timeout(None)

    async def __aenter__(self):
        await self._cm.__aenter__()
        self.clock._armed.append(self)
        if self.when <= self.clock.t:
            self.expire()
        return self

    async def __aexit__(self, *exc):
        if self in self.clock._armed:
            self.clock._armed.remove(self)
        return await self._cm.__aexit__(*exc)

    def expire(self) -> None:
        self.clock._armed.remove(self)
        self._cm.reschedule(asyncio.get_running_loop().time())


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
        self.started: list[list] = []  # batches handed to the engine (before the gate)

    def __call__(self, items):
        self.started.append(list(items))
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


def make(rec, clock=None, **cfg):
    return DynamicBatcher(rec, BatcherConfig(**cfg), clock=clock or ManualClock())


async def until(condition, what: str = "condition") -> None:
    """Let the loop (and the engine thread) run until `condition()` holds; a bound, not a timing window."""
    for _ in range(5000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"{what} never held")


async def settle() -> None:
    """Let every ready callback run: what the batcher does without the clock moving happens here."""
    for _ in range(20):
        await asyncio.sleep(0)


def test_results_map_one_to_one_and_full_batches_go_at_once():
    async def main():
        rec = Recorder()
        b = make(rec, max_batch_size=4, max_queue_delay_ms=200)
        b.start()
        tasks = [asyncio.create_task(b.submit(i, cost=3)) for i in range(4)]
        await until(
            lambda: all(t.done() for t in tasks), "a full batch answered with the clock standing still"
        )
        results = [t.result() for t in tasks]
        await b.close()
        return rec, results

    rec, results = run(main())
    assert results == [f"out:{i}" for i in range(4)]
    assert [sorted(x) for x in rec.batches] == [[0, 1, 2, 3]]  # a full batch does not wait for the delay


def test_delay_is_timed_from_the_first_waiting_request():
    async def main():
        clock = ManualClock()
        rec = Recorder()
        b = make(rec, clock, max_batch_size=8, max_queue_delay_ms=100, adaptive_delay=False)
        b.start()
        first = asyncio.create_task(b.submit("a", 3))
        await settle()
        clock.advance(0.06)
        second = asyncio.create_task(b.submit("b", 3))
        await settle()
        clock.advance(0.039)  # 99 ms after "a": still waiting for company
        await settle()
        waiting_at_99ms = b.depth
        clock.advance(0.001)  # 100 ms after "a" (only 40 ms after "b")
        await until(lambda: first.done() and second.done(), "the batch went 100 ms after the first entry")
        await b.close()
        return rec, waiting_at_99ms

    rec, waiting_at_99ms = run(main())
    assert waiting_at_99ms == 2
    assert rec.batches == [["a", "b"]]


def test_delay_counts_the_time_an_entry_waited_behind_a_running_batch():
    """The delay starts at the entry's arrival, not when the engine frees up: an entry that already waited
    80 ms behind a running batch waits only 20 ms more for company."""

    async def main():
        clock = ManualClock()
        gate = threading.Event()
        rec = Recorder(gate=gate)
        b = make(rec, clock, max_batch_size=8, max_queue_delay_ms=100, adaptive_delay=False)
        b.start()
        blocker = asyncio.create_task(b.submit("blocker", 1))
        await settle()
        clock.advance(0.1)
        await until(lambda: rec.started == [["blocker"]], "blocker dispatched at the delay")
        a = asyncio.create_task(b.submit("a", 1))
        await settle()
        clock.advance(0.08)
        gate.set()  # the engine frees up 80 ms after "a" arrived
        await until(blocker.done, "blocker answered")
        await settle()
        clock.advance(0.019)
        await settle()
        waiting_at_99ms = b.depth
        clock.advance(0.001)
        await until(a.done, '"a" went 100 ms after it arrived')
        await b.close()
        return rec, waiting_at_99ms

    rec, waiting_at_99ms = run(main())
    assert waiting_at_99ms == 1
    assert rec.batches == [["blocker"], ["a"]]


def test_token_budget_groups_similar_lengths():
    async def main():
        gate = threading.Event()
        rec = Recorder(gate=gate)
        b = make(rec, max_batch_size=8, max_queue_delay_ms=0, max_batch_tokens=130)
        b.start()
        blocker = asyncio.create_task(b.submit("blocker", 1))
        await until(lambda: rec.started == [["blocker"]], "the engine busy with blocker")
        costs = {"s1": 5, "L1": 60, "s2": 6, "L2": 62, "s3": 4}
        tasks = [asyncio.create_task(b.submit(k, v)) for k, v in costs.items()]
        await until(lambda: b.depth == len(costs), "the rest queued")
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
        rec = Recorder(gate=gate)
        b = make(rec, max_batch_size=1, max_queue_delay_ms=0, capacity=3)
        b.start()
        running = asyncio.create_task(b.submit("running", 1))
        await until(lambda: rec.started == [["running"]], "the engine busy")
        waiting = [asyncio.create_task(b.submit(i, 1)) for i in range(3)]
        await until(lambda: b.depth == 3, "the queue full")
        # refused at once: the call raises on its first step, before it could wait for anything
        refused = b.submit("one too many", 1)
        with pytest.raises(Overloaded, match="queue full") as e:
            refused.send(None)
        refused.close()
        gate.set()
        await asyncio.gather(running, *waiting)
        await b.close()
        return e.value

    error = run(main())
    assert error.retry_after_s >= 1


def test_deadline_expires_while_queued_and_never_runs():
    async def main():
        clock = ManualClock()
        gate = threading.Event()
        rec = Recorder(gate=gate)
        b = make(rec, clock, max_batch_size=1, max_queue_delay_ms=0)
        b.start()
        running = asyncio.create_task(b.submit("running", 1))
        await until(lambda: rec.started == [["running"]], "the engine busy")
        late = asyncio.create_task(b.submit("late", 1, timeout_s=0.05))
        await settle()
        clock.advance(0.049)
        await settle()
        pending_before_deadline = not late.done()
        clock.advance(0.001)
        await until(late.done, "the deadline expired at 50 ms")
        with pytest.raises(DeadlineExceeded):
            await late
        gate.set()
        await running
        after = await b.submit("next", 1)
        await b.close()
        return rec, after, pending_before_deadline

    rec, after, pending_before_deadline = run(main())
    assert pending_before_deadline  # 49 ms of a 50 ms deadline: still waiting
    assert after == "out:next"
    assert ["late"] not in rec.batches


def test_cancelled_requests_are_skipped():
    async def main():
        gate = threading.Event()
        rec = Recorder(gate=gate)
        b = make(rec, max_batch_size=4, max_queue_delay_ms=0)
        b.start()
        running = asyncio.create_task(b.submit("running", 1))
        await until(lambda: rec.started == [["running"]], "the engine busy")
        gone = asyncio.create_task(b.submit("gone", 1))
        kept = asyncio.create_task(b.submit("kept", 1))
        await until(lambda: b.depth == 2, "both queued")
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
        await until(lambda: rec.started == [["first"]], "the engine busy")
        bad = asyncio.create_task(b.submit("bad", 1))
        peer = asyncio.create_task(b.submit("peer", 1))
        await until(lambda: b.depth == 2, "both queued")
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
        gate = threading.Event()
        rec = Recorder(gate=gate)
        b = make(rec, max_batch_size=2, max_queue_delay_ms=0)
        b.start()
        tasks = [asyncio.create_task(b.submit(i, 1)) for i in range(5)]
        await until(
            lambda: rec.started and b.depth == 5 - len(rec.started[0]), "one batch running, the rest queued"
        )
        closing = asyncio.create_task(b.close(drain=True))
        await settle()
        with pytest.raises(Overloaded, match="unloading"):
            await b.submit("after close", 1)
        gate.set()
        await closing
        return await asyncio.gather(*tasks)

    assert run(main()) == [f"out:{i}" for i in range(5)]


def test_adaptive_delay_lone_requests_do_not_wait_but_bursts_do():
    async def main():
        clock = ManualClock()
        rec = Recorder()
        b = make(rec, clock, max_batch_size=8, max_queue_delay_ms=100)
        b.start()
        lone = asyncio.create_task(b.submit("lone", 1))
        await until(lone.done, "a lone entry answered with the clock standing still (no wait)")
        assert lone.result() == "out:lone"
        clock.advance(0.15)  # quiet again
        first = asyncio.create_task(b.submit("burst-1", 1))
        await until(lambda: rec.started == [["lone"], ["burst-1"]], "burst-1 dispatched at once")
        more = [asyncio.create_task(b.submit(f"burst-{i}", 1)) for i in (2, 3)]
        await first
        await settle()
        waiting = b.depth  # arrived together: they wait for company, up to the delay
        clock.advance(0.1)
        await until(lambda: all(t.done() for t in more), "the burst went at the delay")
        await b.close()
        return rec, waiting

    rec, waiting = run(main())
    assert waiting == 2
    assert rec.batches[0] == ["lone"] and rec.batches[1] == ["burst-1"]
    assert sorted(rec.batches[2]) == ["burst-2", "burst-3"]


def test_monotonic_clock_times_out_on_the_loop_timer():
    """The production clock: `timeout_at` expires at its monotonic time, as asyncio.timeout_at does."""

    async def main():
        clock = MonotonicClock()
        with pytest.raises(TimeoutError):
            async with clock.timeout_at(clock.now() + 0.01):
                await asyncio.Event().wait()
        async with clock.timeout_at(clock.now() + 60):
            await asyncio.sleep(0)  # finished in time: no error

    run(main())
