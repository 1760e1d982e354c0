"""Where a rollout's state lives: one interface, a routing file (`LocalBackend`) or a cluster (`kube.py`).

The rollout operations are pure transitions of the routing config, written once here:

| operation | routing of the model afterwards | deployments (cluster backend) |
|---|---|---|
| start(canary, weight, shadow) | canary = version, weight, shadow | canary Deployment scaled up with the version |
| set_weight(weight, shadow) | weight (and shadow) changed | - |
| promote() | stable = canary, no canary, weight 0, shadow 0 | stable Deployment told the version; canary to 0 |
| rollback() | no canary, weight 0, shadow 0 | canary Deployment scaled to 0 |

A backend implements `read()` and `_update(change)`, an atomic read-modify-write of the whole routing config, and
optionally the deployment hooks. Rollback with no canary is a no-op, so an automatic rollback can always be
retried.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path

from services.canary.routing import ModelRoute, RoutingConfig, RoutingError


class RolloutError(RuntimeError):
    """The operation does not fit the current state (e.g. promote without a canary); nothing was changed."""


Change = Callable[[RoutingConfig], RoutingConfig]


def _route(config: RoutingConfig, model: str) -> ModelRoute:
    try:
        return config.route(model)
    except RoutingError as e:
        raise RolloutError(str(e)) from None


def start_change(model: str, canary: str, weight: float, shadow: float, stable: str | None = None) -> Change:
    def change(config: RoutingConfig) -> RoutingConfig:
        if model not in config.models:
            if stable is None:
                raise RolloutError(
                    f"model {model!r} is not in the routing file: pass its stable version (--stable)"
                )
            current = ModelRoute(stable=stable)
        else:
            current = config.models[model]
        if current.canary is not None and current.canary != canary:
            raise RolloutError(
                f"{model}: a rollout of version {current.canary} is under way; promote or roll it back first"
            )
        if current.stable == canary:
            raise RolloutError(f"{model}: version {canary} is already the stable version")
        route = current.model_copy(update={"canary": canary, "weight": weight, "shadow": shadow})
        return config.replace(model, route)

    return change


def weight_change(model: str, weight: float, shadow: float | None = None) -> Change:
    def change(config: RoutingConfig) -> RoutingConfig:
        current = _route(config, model)
        if current.canary is None:
            raise RolloutError(f"{model}: no canary to send traffic to; start a rollout first")
        update: dict = {"weight": weight}
        if shadow is not None:
            update["shadow"] = shadow
        return config.replace(model, current.model_copy(update=update))

    return change


def promote_change(model: str) -> Change:
    def change(config: RoutingConfig) -> RoutingConfig:
        current = _route(config, model)
        if current.canary is None:
            raise RolloutError(f"{model}: no canary to promote (stable is {current.stable})")
        route = current.model_copy(
            update={"stable": current.canary, "canary": None, "weight": 0, "shadow": 0}
        )
        return config.replace(model, route)

    return change


def rollback_change(model: str) -> Change:
    def change(config: RoutingConfig) -> RoutingConfig:
        current = _route(config, model)
        return config.replace(model, current.model_copy(update={"canary": None, "weight": 0, "shadow": 0}))

    return change


class RolloutBackend(ABC):
    """Reads and changes the routing of a deployment target; subclasses add deployment hooks."""

    target: str = ""

    @abstractmethod
    def read(self) -> RoutingConfig:
        """The routing config as it is now."""

    @abstractmethod
    def _update(self, change: Change) -> RoutingConfig:
        """Apply `change` atomically to the current config and store it; returns the new config."""

    # deployment hooks (no-ops for the routing file)
    def _deploy_canary(self, model: str, version: str) -> None:
        """Make `version` of `model` available to the canary route before it takes traffic."""
        return None  # the routing file has no deployments

    def _promote_stable(self, model: str, version: str) -> None:
        """Make `version` of `model` the stable deployment's version before stable routes to it."""
        return None  # the routing file has no deployments

    def _retire_canary(self, model: str) -> None:
        """Release the canary's resources once no traffic goes to it."""
        return None  # the routing file has no deployments

    def status(self, model: str) -> ModelRoute:
        return _route(self.read(), model)

    def start(
        self, model: str, canary: str, weight: float = 0, shadow: float = 0, stable: str | None = None
    ) -> ModelRoute:
        current = self.read().models.get(model)
        if current is not None and current.canary not in (None, canary):
            raise RolloutError(
                f"{model}: a rollout of version {current.canary} is under way; promote or roll it back first"
            )
        self._deploy_canary(model, canary)
        return self._update(start_change(model, canary, weight, shadow, stable)).models[model]

    def set_weight(self, model: str, weight: float, shadow: float | None = None) -> ModelRoute:
        return self._update(weight_change(model, weight, shadow)).models[model]

    def promote(self, model: str) -> ModelRoute:
        current = self.status(model)
        if current.canary is None:
            raise RolloutError(f"{model}: no canary to promote (stable is {current.stable})")
        self._promote_stable(model, current.canary)
        route = self._update(promote_change(model)).models[model]
        self._retire_canary(model)
        return route

    def rollback(self, model: str) -> ModelRoute:
        route = self._update(rollback_change(model)).models[model]
        self._retire_canary(model)
        return route


class LocalBackend(RolloutBackend):
    """The routing file of the local stack. Writes are atomic (temp file + rename) and serialised by a lock file,
    so the gateway's watcher never reads half a file and two CLI runs cannot interleave."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.target = f"routing file {self.path}"

    def read(self) -> RoutingConfig:
        try:
            text = self.path.read_text("utf-8")
        except OSError as e:
            raise RoutingError(f"{self.path}: cannot read the routing file: {e.strerror or e}") from e
        return RoutingConfig.from_yaml(text, str(self.path))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        lock_path = self.path.with_name(f".{self.path.name}.lock")
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _update(self, change: Change) -> RoutingConfig:
        with self._locked():
            new = change(self.read())
            write_atomic(self.path, new.to_yaml())
        return new


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to a temp file beside `path`, fsync, then rename over `path` (readers see old or new)."""
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)  # mkstemp makes 0600; keep the file readable by the gateway as before
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
