"""Which model versions serve: loading per version policy, warm-up, hot reload and unload.

A (re)load builds and warms the new versions first, then swaps them in with one assignment; versions that
left the policy drain (requests in flight finish on them) and close. A failed load leaves what served before.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from services.runtime.repository import (
    InvalidModelName,
    ModelConfig,
    ModelRepository,
    ModelVersion,
    RepositoryError,
    Task,
)
from services.runtime.runner import RunnerSettings
from services.worker.backends import Backend, create_backend
from services.worker.batcher import BatcherConfig, DynamicBatcher
from services.worker.errors import EngineUnavailable, InvalidInput, LoadFailed, ModelNotFound, ModelNotReady
from services.worker.metrics import WorkerMetrics
from services.worker.settings import WorkerSettings

log = logging.getLogger(__name__)


class ServedVersion:
    """One loaded, warmed model version: tokenizer + backend + its own batcher."""

    def __init__(
        self, version: ModelVersion, backend: Backend, settings: WorkerSettings, metrics: WorkerMetrics
    ):
        self.name = version.name
        self.number = version.version
        self.config: ModelConfig = version.config
        self.labels = version.labels
        self.tokenizer = version.tokenizer()
        # versions with the same vocabulary and casing tokenise alike (up to their max_seq_len): see infer_shared
        vocab = hashlib.sha256(Path(self.tokenizer.vocab_file).read_bytes()).hexdigest()
        self.vocabulary = (vocab, version.tokenizer_settings.do_lower_case)
        self.backend = backend
        self.max_seq_len = self.tokenizer.max_seq_len
        self.seq_bucket = settings.seq_bucket
        cap = settings.max_batch_size or self.config.max_batch_size
        self.max_batch_size = min(cap, self.config.max_batch_size, backend.max_batch_size)
        self.output_names = [o.name for o in self.config.outputs]
        self.engine_timeout_s = settings.engine_timeout_s
        self.ready_cache_s = settings.ready_cache_s
        self.ready_probe_timeout_s = settings.ready_probe_timeout_s
        self._busy_since: float | None = None  # monotonic start of the batch in the engine now, if any
        self._last_ok = -math.inf  # monotonic end of the last batch or probe the engine answered
        self._probed_at, self._probe_ok = -math.inf, False
        self.batcher = DynamicBatcher(
            self._run,
            BatcherConfig(
                max_batch_size=self.max_batch_size,
                max_queue_delay_ms=settings.max_queue_delay_ms,
                adaptive_delay=settings.adaptive_queue_delay,
                max_batch_tokens=settings.max_batch_tokens,
                capacity=settings.queue_capacity,
            ),
            observer=metrics.observer(self.name, self.number),
            name=f"{self.name}-v{self.number}",
        )

    @property
    def task(self) -> Task:
        return self.config.task

    def _padded_width(self, longest: int) -> int:
        return min(self.max_seq_len, math.ceil(longest / self.seq_bucket) * self.seq_bucket)

    def _run(self, items: list[list[int]]) -> list[dict[str, np.ndarray]]:
        """Blocking: one padded batch through the engine, split back into one output dict per text."""
        ids = self.tokenizer.pad(items, pad_to=self._padded_width(max(len(x) for x in items)))
        self._busy_since = time.monotonic()
        try:
            outputs = self.backend.infer(ids)
        finally:
            self._busy_since = None
        self._last_ok = time.monotonic()
        missing = [n for n in self.output_names if n not in outputs]
        if missing:
            raise RuntimeError(f"engine returned no {missing}")
        return [{n: outputs[n][i] for n in self.output_names} for i in range(len(items))]

    def warm_up(self) -> None:
        """Every length bucket at batch 1 and at the largest batch, so no live request pays for a first shape."""
        tok = self.tokenizer
        widths = sorted({*range(self.seq_bucket, self.max_seq_len + 1, self.seq_bucket), self.max_seq_len})
        with getattr(self.backend, "patient", contextlib.nullcontext)():
            for width in widths:
                row = [tok.cls_id] + [tok.unk_id] * (width - 2) + [tok.sep_id]
                for batch in sorted({1, self.max_batch_size}):
                    self._run([row] * batch)

    @property
    def alive(self) -> bool:
        """False once the engine behind this version is gone (an engine process that died)."""
        return self.backend.alive()

    @property
    def hung(self) -> bool:
        """A batch has been in the engine longer than `engine_timeout_s` (an in-process engine cannot be killed)."""
        busy = self._busy_since
        return busy is not None and time.monotonic() - busy > self.engine_timeout_s

    async def ready_now(self) -> bool:
        """Can this version serve now? A dead or hung engine cannot; an engine that answered a batch or a
        probe within `ready_cache_s`, or is inside a batch shorter than `engine_timeout_s`, can; otherwise one
        tiny input goes through it between batches (`ready_probe_timeout_s`), and the answer is kept
        `ready_cache_s`."""
        if not self.alive:
            return False
        now = time.monotonic()
        if self._busy_since is not None:
            return not self.hung
        if now - self._last_ok < self.ready_cache_s:
            return True
        if now - self._probed_at < self.ready_cache_s:
            return self._probe_ok
        self._probed_at = now
        try:
            await self.batcher.run_exclusive(self.backend.health, self.ready_probe_timeout_s)
            self._probe_ok, self._last_ok = True, time.monotonic()
        except Exception as e:  # noqa: BLE001 - any failure (timeout, dead engine, engine error) means not ready
            log.warning("%s v%s: readiness probe failed: %s", self.name, self.number, type(e).__name__)
            self._probe_ok = False
        return self._probe_ok

    async def close(self, drain: bool = True) -> None:
        """Stop the batcher (letting queued texts finish when `drain`), then release the engine."""
        await self.batcher.close(drain=drain)
        await asyncio.to_thread(self.backend.close)

    async def infer(self, texts: list[str], timeout_s: float) -> list[dict[str, np.ndarray]]:
        """All texts of a request are admitted together or refused together; if one fails, the rest are
        cancelled (and dropped by the batcher before they cost engine time). A dead or hung engine refuses at
        once (503) instead of queueing texts it will never run."""
        self._admit(len(texts))
        return await self._submit(self.tokenizer.encode_ids(texts), timeout_s)

    async def infer_ids(self, ids: list[list[int]], timeout_s: float) -> list[dict[str, np.ndarray]]:
        """`infer` for texts already tokenised with this version's vocabulary (cut here to max_seq_len)."""
        self._admit(len(ids))
        return await self._submit([self.cut(x) for x in ids], timeout_s)

    def cut(self, ids: list[int]) -> list[int]:
        """Token ids of a longer truncation ([CLS] … [SEP]) as this version's tokenizer truncates them."""
        if len(ids) <= self.max_seq_len:
            return ids
        return [*ids[: self.max_seq_len - 1], self.tokenizer.sep_id]

    def _admit(self, n: int) -> None:
        if not self.alive or self.hung:
            raise EngineUnavailable(
                f"the engine of {self.name!r} version {self.number} is not answering; it is being restarted"
            )
        self.batcher.reserve(n)

    async def _submit(self, ids: list[list[int]], timeout_s: float) -> list[dict[str, np.ndarray]]:
        tasks = [asyncio.ensure_future(self.batcher.submit(x, len(x), timeout_s)) for x in ids]
        try:
            return await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            raise


async def infer_shared(
    targets: list[ServedVersion], texts: list[str], timeout_s: float
) -> list[list[dict[str, np.ndarray]] | BaseException]:
    """`texts` through every target concurrently, tokenised once per vocabulary (by the version with the
    longest max_seq_len, cut for the others: the same ids their own tokenizer gives). One target's failure
    (refused, dead engine, deadline) is its own: returned in its place, the others still answer."""
    ids_of: dict[int, list[list[int]]] = {}
    groups: dict[tuple, list[int]] = {}
    for i, served in enumerate(targets):
        groups.setdefault(served.vocabulary, []).append(i)
    for members in groups.values():
        longest = max((targets[i] for i in members), key=lambda s: s.max_seq_len)
        ids = longest.tokenizer.encode_ids(texts)
        for i in members:
            ids_of[i] = ids
    return await asyncio.gather(
        *(served.infer_ids(ids_of[i], timeout_s) for i, served in enumerate(targets)), return_exceptions=True
    )


class ModelManager:
    def __init__(
        self,
        repository: ModelRepository,
        settings: WorkerSettings,
        metrics: WorkerMetrics,
        backend_factory: Callable[[ModelVersion], Backend] | None = None,
        runner: RunnerSettings | None = None,
    ):
        self.repository = repository
        self.settings = settings
        # the engines' settings (KEFU_RUNNER_*), read once here and handed to every backend it builds
        self.runner = runner if runner is not None else RunnerSettings.from_env()
        self.metrics = metrics
        self._backend_factory = backend_factory or self._default_backend
        self._serving: dict[str, dict[int, ServedVersion]] = {}
        self._loading: set[str] = set()
        self._locks: dict[str, asyncio.Lock] = {}
        self._wanted: list[str] = []
        self._watchdog: asyncio.Task | None = None

    def _default_backend(self, version: ModelVersion) -> Backend:
        if self.settings.engine_process and self.settings.backend == "paddle":
            from services.worker.engine_process import EngineProcessBackend

            return EngineProcessBackend(
                str(self.repository.root),
                version.name,
                version.version,
                "paddle",
                call_timeout_s=self.settings.engine_timeout_s,
                runner=self.runner,
            )
        return create_backend(self.settings.backend, version, self.runner)

    # ---- queries ---------------------------------------------------------------------------------------

    def names(self) -> list[str]:
        return sorted(self._serving)

    def get(self, name: str, version: int | None = None) -> ServedVersion:
        versions = self._serving.get(name)
        if not versions:
            if name in self._loading:
                raise ModelNotReady(f"model {name!r} is loading")
            raise ModelNotFound(f"model {name!r} is not loaded")
        if version is None:
            return versions[max(versions)]
        if version not in versions:
            raise ModelNotFound(
                f"model {name!r} has no version {version} serving (serving: {sorted(versions)})"
            )
        return versions[version]

    def versions(self, name: str) -> list[int]:
        return sorted(self._serving.get(name, {}))

    def is_ready(self, name: str | None = None) -> bool:
        if name is not None:
            versions = self._serving.get(name)
            return bool(versions) and all(v.alive for v in versions.values())
        return all(self.is_ready(n) for n in self._wanted) and not self._loading

    async def ready_now(self, name: str | None = None, version: int | None = None) -> bool:
        """Live readiness: every wanted model (or `name`, or one of its versions) loaded and able to serve now
        (`ServedVersion.ready_now`: a dead or hung engine is not ready). Updates `kefu_worker_model_ready`."""
        if name is None:
            if self._loading:
                return False
            results = [await self.ready_now(n) for n in self._wanted]
            return all(results)
        if version is None:
            versions = list(self._serving.get(name, {}).values())
        else:
            one = self._serving.get(name, {}).get(version)
            versions = [one] if one is not None else []
        if not versions:
            return False
        ok = True
        for served in versions:
            served_ok = await served.ready_now()
            self.metrics.ready.labels(served.name, str(served.number)).set(1 if served_ok else 0)
            ok = ok and served_ok
        return ok

    def public_message(self, error: Exception) -> str:
        """An error's text without the repository's location (it names `intent/2`, never `/srv/…/intent/2`)."""
        text = str(error)
        for root in sorted(
            {str(self.repository.root.resolve()), str(self.repository.root)}, key=len, reverse=True
        ):
            text = text.replace(root + "/", "").replace(root, "<repository>")
        return text

    # ---- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._wanted = self.settings.model_names or self.repository.model_names()
        self._loading.update(self._wanted)
        for name in self._wanted:
            try:
                await self.load(name)
            except LoadFailed as e:
                log.error("%s", e)
        if self.settings.engine_check_interval_s > 0:
            self._watchdog = asyncio.get_running_loop().create_task(self._watch_engines())

    async def _watch_engines(self) -> None:
        """Readiness reports a dead engine at once (`is_ready`); this replaces it: the model is reloaded, which
        rebuilds only the versions whose engine is gone, while its other versions keep serving."""
        while True:
            await asyncio.sleep(self.settings.engine_check_interval_s)
            for name, versions in list(self._serving.items()):
                dead = [n for n, v in versions.items() if not v.alive]
                if not dead:
                    continue
                for number in dead:
                    self.metrics.ready.labels(name, str(number)).set(0)
                log.error("%s: engine of version(s) %s is gone; restarting it", name, dead)
                try:
                    await self.load(name)
                except LoadFailed as e:
                    log.error(
                        "%s: restart failed (retrying in %.0f s): %s",
                        name,
                        self.settings.engine_check_interval_s,
                        e,
                    )

    async def load(self, name: str) -> list[int]:
        """Load (or reload) the versions the policy selects; returns the versions now serving."""
        try:
            self.repository.model_dir(name)
        except InvalidModelName as e:
            raise InvalidInput(str(e)) from None
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            self._loading.add(name)
            try:
                return await self._load_locked(name)
            finally:
                self._loading.discard(name)

    async def _load_locked(self, name: str) -> list[int]:
        try:
            config = self.repository.config(name)
            wanted = config.version_policy.select(self.repository.versions(name))
        except (RepositoryError, OSError) as e:
            log.error("cannot load %r: %s", name, e)
            raise LoadFailed(f"cannot load {name!r}: {self.public_message(e)}") from e
        if not wanted:
            raise LoadFailed(f"cannot load {name!r}: its version policy selects no version on disk")
        current = self._serving.get(name, {})
        fresh: dict[int, ServedVersion] = {}
        try:
            for number in wanted:
                if number in current and current[number].config == config and current[number].alive:
                    continue
                fresh[number] = await asyncio.to_thread(self._build, name, number)
                if self.settings.warmup:
                    await asyncio.to_thread(fresh[number].warm_up)
        except Exception as e:
            for served in fresh.values():
                await served.close(drain=False)
            log.error("cannot load %r: %s", name, e)
            raise LoadFailed(f"cannot load {name!r}: {self.public_message(e)}") from e
        for served in fresh.values():
            served.batcher.start()
        serving = {n: fresh.get(n) or current[n] for n in wanted}
        self._serving[name] = serving  # the switch: new requests go to the new set from here on
        for number, served in current.items():
            if serving.get(number) is not served:
                asyncio.get_running_loop().create_task(self._retire(served))
        for number in serving:
            self.metrics.ready.labels(name, str(number)).set(1)
        if name not in self._wanted:
            self._wanted.append(name)
        log.info("%s: serving versions %s", name, sorted(serving))
        return sorted(serving)

    def _build(self, name: str, number: int) -> ServedVersion:
        version = self.repository.open(name, number)  # verifies the manifest
        return ServedVersion(version, self._backend_factory(version), self.settings, self.metrics)

    async def _retire(self, served: ServedVersion) -> None:
        await served.close(drain=True)
        self.metrics.ready.labels(served.name, str(served.number)).set(0)
        log.info("%s: version %s retired", served.name, served.number)

    async def unload(self, name: str) -> None:
        try:
            self.repository.model_dir(name)
        except InvalidModelName as e:
            raise InvalidInput(str(e)) from None
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            versions = self._serving.pop(name, None)
            if versions is None:
                raise ModelNotFound(f"model {name!r} is not loaded")
            if name in self._wanted:
                self._wanted.remove(name)
            await asyncio.gather(*(self._retire(s) for s in versions.values()))

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        for name in list(self._serving):
            await asyncio.gather(*(self._retire(s) for s in self._serving.pop(name).values()))
