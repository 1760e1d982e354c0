"""Dynamic batching in plain asyncio: no HTTP, no Paddle.

One `DynamicBatcher` per served model version. Callers `submit()` one item (one text's token ids) with its
cost (token count) and deadline and await its result; a background loop forms batches and runs them, one at a
time, through a blocking `run_batch` callable in a worker thread.

Batch forming:
- the oldest waiting entry always goes first (no starvation; an entry too costly for the token budget still
  runs, alone, instead of hanging);
- the batch waits for more entries until it is full or `max_queue_delay_ms` has passed since the *first*
  waiting entry arrived; with `adaptive_delay` (default) a lone entry on an idle engine does not wait at all
  unless the entry before it arrived less than `max_queue_delay_ms` earlier: waiting only pays when traffic is
  concurrent, and a quiet server answers at single-request latency;
- it is filled with the entries closest in length to the oldest, while `batch size x longest <= max_batch_tokens`,
  so short messages are not padded to long ones.

Admission is bounded: a full queue refuses at once (`Overloaded`); an entry whose deadline passes while
queued is failed with `DeadlineExceeded` and never runs; a cancelled caller's entry is dropped before it reaches
the engine. A failing batch fails only its own entries, and the loop lives on. Outputs are checked one-to-one
against inputs.

Every time the batcher reads or waits for (arrivals, the queue delay, deadlines) comes from its `Clock`:
`MonotonicClock` in production, a clock the test moves by hand in tests (timing checked logically, no sleeps).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from services.worker.errors import DeadlineExceeded, InferenceFailed, Overloaded, WorkerError

log = logging.getLogger(__name__)


class Clock(Protocol):
    """Where the batcher's time comes from: `now()` in seconds (monotonic) and `timeout_at(when)`, an async
    context manager that raises TimeoutError when `now()` reaches `when` (as `asyncio.timeout_at` does)."""

    def now(self) -> float: ...
    def timeout_at(self, when: float) -> contextlib.AbstractAsyncContextManager: ...


class MonotonicClock:
    """`time.monotonic()`; waits run on the event loop's own timer."""

    def now(self) -> float:
        return time.monotonic()

    def timeout_at(self, when: float) -> asyncio.Timeout:
        loop = asyncio.get_running_loop()
        return asyncio.timeout_at(loop.time() + (when - time.monotonic()))


class BatchObserver(Protocol):
    """Where the batcher reports what happened (metrics); every method must be cheap."""

    def queue_depth(self, depth: int) -> None: ...
    def batch_started(self, size: int, queue_seconds: list[float]) -> None: ...
    def batch_finished(self, size: int, compute_seconds: float, ok: bool) -> None: ...


class _NullObserver:
    def queue_depth(self, depth: int) -> None:
        pass

    def batch_started(self, size: int, queue_seconds: list[float]) -> None:
        pass

    def batch_finished(self, size: int, compute_seconds: float, ok: bool) -> None:
        pass


@dataclass(eq=False)
class Entry:
    item: Any
    cost: int
    deadline: float | None  # clock time
    future: asyncio.Future
    arrived: float  # clock time


@dataclass(frozen=True)
class BatcherConfig:
    max_batch_size: int = 32
    max_queue_delay_ms: float = 1.0
    max_batch_tokens: int = 4096
    capacity: int = 256  # waiting entries before new ones are refused
    adaptive_delay: bool = True  # skip the wait for a lone entry when nothing else arrived recently

    def __post_init__(self):
        if (
            self.max_batch_size < 1
            or self.capacity < 1
            or self.max_batch_tokens < 1
            or self.max_queue_delay_ms < 0
        ):
            raise ValueError(f"invalid batcher config {self}")


class DynamicBatcher:
    def __init__(
        self,
        run_batch: Callable[[list[Any]], Sequence[Any]],
        config: BatcherConfig,
        observer: BatchObserver | None = None,
        executor: Executor | None = None,
        name: str = "batcher",
        clock: Clock | None = None,
    ):
        self._run_batch = run_batch
        self._clock = clock or MonotonicClock()
        self.config = config
        self._observer = observer or _NullObserver()
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._owns_executor = executor is None
        self._queue: list[Entry] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closing = False
        self._running_batch = False
        self._previous_arrival = -float("inf")  # clock time of the entry before the newest one
        self._last_arrival = -float("inf")
        self.name = name

    # ---- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"{self.name}-loop")

    async def close(self, drain: bool = True, timeout_s: float = 30.0) -> None:
        """Stop taking entries; with `drain`, let every waiting and running entry finish first."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            if drain:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
            if not self._task.done():
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        for entry in self._queue:
            if not entry.future.done():
                entry.future.set_exception(Overloaded("the model version is unloading; retry"))
        self._queue.clear()
        if self._owns_executor:
            self._executor.shutdown(wait=False)

    async def run_exclusive(self, fn: Callable[[], Any], timeout_s: float) -> Any:
        """Run `fn` on the engine thread between two batches (never beside one): a health probe. Raises
        TimeoutError if it has not finished within `timeout_s` (the thread may still be busy with it)."""
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(loop.run_in_executor(self._executor, fn), timeout_s)

    @property
    def depth(self) -> int:
        return len(self._queue)

    @property
    def idle(self) -> bool:
        return not self._queue and not self._running_batch

    # ---- submission ------------------------------------------------------------------------------------

    def reserve(self, n: int) -> None:
        """Raise Overloaded now unless `n` more entries fit in the queue (a request's texts go in together)."""
        if self._closing:
            raise Overloaded("the model version is unloading; retry")
        if len(self._queue) + n > self.config.capacity:
            raise Overloaded(
                f"queue full ({len(self._queue)} of {self.config.capacity} waiting); retry later"
            )

    async def submit(self, item: Any, cost: int, timeout_s: float | None = None) -> Any:
        """Queue one item and wait for its result. Raises Overloaded at once when the queue is full."""
        self.reserve(1)
        loop = asyncio.get_running_loop()
        now = self._clock.now()
        deadline = now + timeout_s if timeout_s is not None else None
        entry = Entry(item, cost, deadline, loop.create_future(), now)
        self._previous_arrival, self._last_arrival = self._last_arrival, entry.arrived
        self._queue.append(entry)
        self._observer.queue_depth(len(self._queue))
        self._wakeup.set()
        try:
            if deadline is None:
                return await entry.future
            async with self._clock.timeout_at(deadline):
                return await asyncio.shield(entry.future)
        except TimeoutError:
            entry.future.cancel()
            raise DeadlineExceeded(f"deadline of {timeout_s * 1000:.0f} ms exceeded") from None
        except asyncio.CancelledError:
            entry.future.cancel()  # the caller went away: the loop drops the entry before it runs
            raise

    # ---- the loop --------------------------------------------------------------------------------------

    def _prune(self) -> None:
        """Drop cancelled entries and fail expired ones before they cost engine time."""
        now = self._clock.now()
        keep = []
        for entry in self._queue:
            if entry.future.done():
                continue
            if entry.deadline is not None and now >= entry.deadline:
                entry.future.set_exception(DeadlineExceeded("deadline exceeded while queued"))
                continue
            keep.append(entry)
        if len(keep) != len(self._queue):
            self._queue = keep
            self._observer.queue_depth(len(keep))

    async def _wait_for_batch(self) -> None:
        """Return when the queue holds a full batch or the first waiting entry has waited max_queue_delay_ms."""
        delay = self.config.max_queue_delay_ms / 1000
        first = self._queue[0]
        if (
            self.config.adaptive_delay
            and len(self._queue) == 1
            and first.arrived - self._previous_arrival > delay
        ):
            return  # a lone request on a quiet server: company is unlikely, do not make it wait
        until = first.arrived + delay
        while len(self._queue) < self.config.max_batch_size and not self._closing:
            if until - self._clock.now() <= 0:
                return
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                async with self._clock.timeout_at(until):
                    await self._wakeup.wait()
            self._prune()
            if not self._queue:
                return

    def _take_batch(self) -> list[Entry]:
        first = self._queue[0]
        chosen, width = [first], first.cost
        candidates = sorted(self._queue[1:], key=lambda e: abs(e.cost - first.cost))
        for entry in candidates:
            if len(chosen) >= self.config.max_batch_size:
                break
            new_width = max(width, entry.cost)
            if new_width * (len(chosen) + 1) > self.config.max_batch_tokens:
                continue
            chosen.append(entry)
            width = new_width
        taken = set(map(id, chosen))
        self._queue = [e for e in self._queue if id(e) not in taken]
        self._observer.queue_depth(len(self._queue))
        return chosen

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._prune()
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._wait_for_batch()
            self._prune()
            if not self._queue:
                continue
            batch = self._take_batch()
            now = self._clock.now()
            self._observer.batch_started(len(batch), [now - e.arrived for e in batch])
            self._running_batch = True
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self._run_batch, [e.item for e in batch])
                if len(results) != len(batch):
                    raise InferenceFailed(f"backend returned {len(results)} outputs for {len(batch)} inputs")
            except Exception as e:  # noqa: BLE001 - a failing batch fails its own entries only
                log.exception("%s: batch of %d failed", self.name, len(batch))
                # a domain error (the engine is hung or gone: 503) keeps its meaning; anything else is a 500
                error = e if isinstance(e, WorkerError) else InferenceFailed(f"inference failed: {e}")
                for entry in batch:
                    if not entry.future.done():
                        entry.future.set_exception(error)
                self._observer.batch_finished(len(batch), time.perf_counter() - started, ok=False)
                continue
            finally:
                self._running_batch = False
            self._observer.batch_finished(len(batch), time.perf_counter() - started, ok=True)
            for entry, result in zip(batch, results, strict=True):
                if not entry.future.done():
                    entry.future.set_result(result)
