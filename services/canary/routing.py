"""Per-model routing: which version serves a request (stable or canary) and whether it is mirrored (shadow).

The routing file (YAML; in the cluster the `routing.yaml` key of a ConfigMap) names, per model::

    models:
      intent:
        stable: "1"        # the version that serves by default
        canary: "2"        # optional candidate version
        weight: 10         # % of traffic (0-100, two decimals) answered by the canary
        shadow: 20         # % of stable-served requests also sent to the canary, answer discarded
        sticky: true       # a session id always lands on the same side while the weight is unchanged

`RoutingTable.decide(model, session_id)` is what the gateway calls per request, with the sticky id
`sticky_id(tenant, session id)`: session ids are chosen by each tenant's clients, so two tenants' equal ids are
two conversations and land in independent buckets. Stickiness: a stable hash of (model, sticky id) picks one of
10,000 buckets; buckets below `weight * 100` go to the canary. The same session
therefore keeps its version while the weight is unchanged, and raising the weight only moves the extra buckets
(a session on the canary at 10% is still on it at 25%). Requests without a session id (or with `sticky: false`)
draw a random bucket. Weights 0 and 100 are exact. The shadow draw is separate from the split: a shadowed request
is one served by stable and mirrored to the canary.

`RoutingWatcher` (in `watcher.py`) hot-reloads the file and swaps tables atomically.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

BUCKETS = 10_000
ROUTING_KEY = "routing.yaml"


class RoutingError(ValueError):
    """The routing file is missing, unreadable or invalid; the message names the field and the problem."""


def _version(value: object) -> object:
    """Versions are folder names in the model repository (`1`, `2`): accept YAML ints, keep strings."""
    if isinstance(value, bool):
        return value  # let pydantic reject it as a non-string
    if isinstance(value, int):
        return str(value)
    return value


class ModelRoute(BaseModel):
    """Routing of one model."""

    model_config = ConfigDict(extra="forbid")

    stable: str = Field(min_length=1, description="version serving by default")
    canary: str | None = Field(None, min_length=1, description="candidate version, if a rollout is under way")
    weight: float = Field(0, ge=0, le=100, description="percent of traffic answered by the canary")
    shadow: float = Field(
        0, ge=0, le=100, description="percent of stable-served requests mirrored to the canary"
    )
    sticky: bool = Field(True, description="keep a session id on one side of the split")

    @field_validator("stable", "canary", mode="before")
    @classmethod
    def _normalise(cls, v: object) -> object:
        return _version(v)

    @field_validator("weight", "shadow")
    @classmethod
    def _two_decimals(cls, v: float) -> float:
        if abs(v * 100 - round(v * 100)) > 1e-6:
            raise ValueError(f"{v} has more than two decimals (the split has {BUCKETS} buckets)")
        return float(v)

    @model_validator(mode="after")
    def _canary_consistent(self) -> ModelRoute:
        if self.canary is None and (self.weight > 0 or self.shadow > 0):
            raise ValueError(f"weight {self.weight:g} / shadow {self.shadow:g} need a canary version")
        if self.canary is not None and self.canary == self.stable:
            raise ValueError(f"canary version {self.canary!r} is the stable version")
        return self


class RoutingConfig(BaseModel):
    """The whole routing file."""

    model_config = ConfigDict(extra="forbid")

    models: dict[str, ModelRoute] = Field(default_factory=dict, description="routing per model name")

    @classmethod
    def from_yaml(cls, text: str, source: str = "routing file") -> RoutingConfig:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise RoutingError(f"{source}: not valid YAML: {e}") from e
        if data is None:
            # an empty file is what a reader sees mid-way through a non-atomic write: never "no routing"
            raise RoutingError(f"{source}: empty routing file (write `models: {{}}` for no routing)")
        if not isinstance(data, dict):
            raise RoutingError(f"{source}: expected a mapping with a 'models' key, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise RoutingError(f"{source}: {_explain(e)}") from e

    def to_yaml(self) -> str:
        data = {"models": {name: r.model_dump(exclude_none=True) for name, r in self.models.items()}}
        return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)

    def route(self, model: str) -> ModelRoute:
        try:
            return self.models[model]
        except KeyError:
            raise RoutingError(
                f"model {model!r} is not in the routing file ({', '.join(self.models) or 'empty'})"
            ) from None

    def replace(self, model: str, route: ModelRoute) -> RoutingConfig:
        """A copy with `model` routed by `route` (validated again)."""
        models = dict(self.models)
        models[model] = ModelRoute.model_validate(route.model_dump())
        return RoutingConfig(models=models)


def _explain(e: ValidationError) -> str:
    """One line per problem: `models.intent.weight: Input should be less than or equal to 100 (got 150)`."""
    lines = []
    for err in e.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(root)"
        scalar = not isinstance(err.get("input"), dict | list) and err["type"] != "missing"
        got = f" (got {err['input']!r})" if scalar and "input" in err else ""
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {msg}{got}")
    return "; ".join(lines)


@dataclass(frozen=True, slots=True)
class Route:
    """Where one request goes. `version` None: the model is not in the routing table (serve its default)."""

    version: str | None
    role: Literal["stable", "canary"]
    shadow_version: str | None = None


_UNROUTED = Route(None, "stable", None)


def sticky_id(tenant: str, session_id: str) -> str:
    """The id a gateway request is sticky by: `<tenant>/<session id>` (neither part may contain `/`)."""
    if "/" in tenant or "/" in session_id:
        raise ValueError("sticky_id: tenant and session id must not contain '/'")
    return f"{tenant}/{session_id}"


def bucket(model: str, session_id: str) -> int:
    """Stable bucket 0..9999 of (model, sticky id): the same on every process, host and Python run."""
    digest = hashlib.blake2b(f"{model}\x00{session_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


class RoutingTable:
    """An immutable, validated routing config with the per-request decision. Safe to share between threads."""

    __slots__ = ("config", "_compiled")

    def __init__(self, config: RoutingConfig):
        self.config = config
        # model -> (stable, canary, canary buckets, shadow buckets, sticky): decide() reads only this
        self._compiled = {
            name: (r.stable, r.canary, round(r.weight * 100), round(r.shadow * 100), r.sticky)
            for name, r in config.models.items()
        }

    @classmethod
    def from_yaml(cls, text: str, source: str = "routing file") -> RoutingTable:
        return cls(RoutingConfig.from_yaml(text, source))

    def decide(self, model: str, session_id: str | None = None, rng: random.Random | None = None) -> Route:
        """The version serving this request, its role, and the version to mirror it to (or None)."""
        entry = self._compiled.get(model)
        if entry is None:
            return _UNROUTED
        stable, canary, canary_buckets, shadow_buckets, sticky = entry
        if canary is None:
            return Route(stable, "stable", None)
        draw = rng or random
        if session_id and sticky:
            b = bucket(model, session_id)
        else:
            b = draw.randrange(BUCKETS)
        if b < canary_buckets:
            return Route(canary, "canary", None)
        if shadow_buckets and draw.randrange(BUCKETS) < shadow_buckets:
            return Route(stable, "stable", canary)
        return Route(stable, "stable", None)

    def __repr__(self) -> str:
        return f"RoutingTable({self.config.model_dump()})"


def __getattr__(name: str):
    """`from services.canary.routing import RoutingWatcher` works too (it lives in watcher.py)."""
    if name == "RoutingWatcher":
        from services.canary.watcher import RoutingWatcher

        return RoutingWatcher
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
