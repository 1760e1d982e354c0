"""Rollout policy (`policy.yaml`): traffic steps, bake time, shadow share, gates and their thresholds.

    steps: [5, 25, 50, 100]       # canary weight (%) per step; the last step must be 100 = promotion
    bake: 5m                      # how long each step takes traffic before it is analysed
    shadow: 50                    # % of stable-served requests mirrored to the canary during the rollout
    window: null                  # Prometheus range of the analysis (default: the step's bake time)
    max_extra_bakes: 2            # an inconclusive analysis (too little data) bakes again, this many times
    gates:
      error_rate: {max_ratio: 1.5, max_increase: 0.01, min_requests: 100}
      latency_p99: {max_ratio: 1.5, max_increase_ms: 25, min_requests: 100}
      shadow_agreement: {min_agreement: 0.9, min_comparisons: 100}
      confidence_shift: {max_psi: 0.25, min_samples: 200}
      label_shift: {measure: psi, max: 0.25, min_samples: 200}
    offline: {max_drop: 0.02}     # evaluation.json of canary vs stable, checked before any traffic moves

A step may also be a mapping: `{weight: 25, bake: 10m, shadow: 20}`. A first step of weight 0 is shadow only: the
candidate answers no client until its mirrored answers passed the gates (a broken version is caught there). Weight 100 is the promotion: stable becomes
the canary version and the canary entry is removed, so the gates run at every step below 100 (at 100% there is no
stable traffic left to compare with). A gate set to `null` is not run. Durations are Prometheus-style strings
(`90s`, `5m`, `1h`) or numbers of seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from services.canary.prometheus import window_seconds


class PolicyError(ValueError):
    """The policy file is missing or invalid; the message names the field."""


def _seconds(value: object) -> object:
    if isinstance(value, str):
        try:
            return window_seconds(value)
        except ValueError as e:
            raise ValueError(str(e)) from None
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorRateGate(_Strict):
    """Canary error fraction vs stable's: fails above max(stable x max_ratio, stable + max_increase)."""

    max_ratio: float = Field(1.5, ge=1, description="allowed multiple of stable's error fraction")
    max_increase: float = Field(0.01, ge=0, le=1, description="allowed absolute increase (0.01 = 1 point)")
    min_requests: int = Field(100, ge=1, description="requests each version needs in the window")


class LatencyGate(_Strict):
    """Canary p99 model-call latency vs stable's: fails above max(stable x max_ratio, stable + max_increase_ms)."""

    max_ratio: float = Field(1.5, ge=1, description="allowed multiple of stable's p99")
    max_increase_ms: float = Field(25, ge=0, description="allowed absolute increase in milliseconds")
    min_requests: int = Field(100, ge=1, description="requests each version needs in the window")


class AgreementGate(_Strict):
    """Share of shadowed requests where the canary's top answer equals stable's."""

    min_agreement: float = Field(0.9, ge=0, le=1, description="lowest passing agreement (0..1)")
    min_comparisons: int = Field(100, ge=1, description="shadow comparisons needed in the window")


class ConfidenceShiftGate(_Strict):
    """PSI between the canary's and stable's top-label confidence histograms."""

    max_psi: float = Field(0.25, gt=0, description="highest passing PSI (0.1 small, 0.25 large shift)")
    min_samples: int = Field(
        500, ge=1, description="answers each version needs (20 bins: PSI noise is ~19 x (1/n1 + 1/n2))"
    )


class LabelShiftGate(_Strict):
    """Shift of the predicted-label distribution, canary vs stable."""

    measure: Literal["psi", "tv"] = Field("psi", description="psi, or tv (total variation, 0..1)")
    max: float = Field(0.25, gt=0, description="highest passing value of the measure")
    min_samples: int = Field(200, ge=1, description="predictions each version needs in the window")


class GatesConfig(_Strict):
    """Online gates; `null` disables one."""

    error_rate: ErrorRateGate | None = Field(default_factory=ErrorRateGate)
    latency_p99: LatencyGate | None = Field(default_factory=LatencyGate)
    shadow_agreement: AgreementGate | None = Field(default_factory=AgreementGate)
    confidence_shift: ConfidenceShiftGate | None = Field(default_factory=ConfidenceShiftGate)
    label_shift: LabelShiftGate | None = Field(default_factory=LabelShiftGate)


class OfflineGate(_Strict):
    """Candidate's evaluation.json vs stable's, on the same labelled set."""

    max_drop: float = Field(0.02, ge=0, le=1, description="largest allowed drop of each metric (absolute)")
    metrics: list[str] | None = Field(
        None,
        description="metrics to compare; default accuracy+macro_f1 (classifiers), recall_at_1+mrr (encoders)",
    )


class Step(_Strict):
    weight: float = Field(
        ge=0,
        le=100,
        description="canary traffic share (%) during this step; 0 (first step only): shadow only",
    )
    bake: float | None = Field(
        None, ge=0, description="seconds of traffic before analysis (default: policy's)"
    )
    shadow: float | None = Field(
        None, ge=0, le=100, description="shadow % during this step (default: policy's)"
    )

    @field_validator("bake", mode="before")
    @classmethod
    def _bake(cls, v: object) -> object:
        return _seconds(v)


class RolloutPolicy(_Strict):
    steps: list[Step] = Field(min_length=1, description="ascending weights ending at 100")
    bake: float = Field(300, ge=0, description="seconds each step bakes before its analysis")
    shadow: float = Field(
        0, ge=0, le=100, description="shadow % of stable-served requests during the rollout"
    )
    window: str | None = Field(None, description="Prometheus range of the analysis; default: the step's bake")
    max_extra_bakes: int = Field(2, ge=0, description="extra bakes when an analysis is inconclusive")
    progress_every: float = Field(10, gt=0, description="seconds between progress lines while baking")
    gates: GatesConfig = Field(default_factory=GatesConfig)
    offline: OfflineGate | None = Field(default_factory=OfflineGate)

    @field_validator("steps", mode="before")
    @classmethod
    def _steps(cls, v: object) -> object:
        if isinstance(v, list):
            return [{"weight": s} if isinstance(s, int | float) and not isinstance(s, bool) else s for s in v]
        return v

    @field_validator("bake", mode="before")
    @classmethod
    def _bake(cls, v: object) -> object:
        return _seconds(v)

    @field_validator("window")
    @classmethod
    def _window(cls, v: str | None) -> str | None:
        if v is not None:
            window_seconds(v)
        return v

    @model_validator(mode="after")
    def _ascending_to_100(self) -> RolloutPolicy:
        weights = [s.weight for s in self.steps]
        if any(b <= a for a, b in zip(weights, weights[1:], strict=False)):
            raise ValueError(f"steps must strictly increase, got {weights}")
        if self.steps[0].weight == 0 and self.shadow_of(self.steps[0]) == 0:
            raise ValueError("a first step of weight 0 is shadow only: it needs a shadow share above 0")
        if weights[-1] != 100:
            raise ValueError(f"the last step must be 100 (the promotion), got {weights[-1]:g}")
        return self

    def bake_of(self, step: Step) -> float:
        return self.bake if step.bake is None else step.bake

    def shadow_of(self, step: Step) -> float:
        return self.shadow if step.shadow is None else step.shadow

    def window_of(self, step: Step) -> str:
        """The analysis range: the policy's window, else the bake time (at least 30 s: two scrapes)."""
        if self.window is not None:
            return self.window
        return f"{max(30, round(self.bake_of(step)))}s"

    @classmethod
    def load(cls, path: Path) -> RolloutPolicy:
        try:
            data = yaml.safe_load(path.read_text("utf-8"))
        except OSError as e:
            raise PolicyError(f"{path}: cannot read the policy: {e.strerror or e}") from e
        except yaml.YAMLError as e:
            raise PolicyError(f"{path}: not valid YAML: {e}") from e
        try:
            return cls.model_validate(data or {})
        except ValidationError as e:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg'].removeprefix('Value error, ')}"
                for err in e.errors()
            )
            raise PolicyError(f"{path}: {problems}") from e


DEFAULT_POLICY = Path(__file__).resolve().parent / "policy.yaml"
