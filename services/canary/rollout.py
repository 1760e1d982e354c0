"""`run`: step a canary through the policy, bake, analyse, and promote or roll back on its own.

    offline gate (evaluation.json) -> start at the first weight (0: shadow only) -> for each step below 100:
        set weight, bake (progress lines), analyse; FAIL -> roll back; INCONCLUSIVE -> bake again
        (max_extra_bakes), then roll back for want of evidence
    -> promote at the step of weight 100

Any error or Ctrl-C after traffic moved rolls back before returning, so a crashed run never leaves a canary
serving. Time (`sleep`, `clock`) and output (`out`) are injected so tests run instantly.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from services.canary.analysis import Analysis, Analyzer, GateResult, Status
from services.canary.backends import RolloutBackend, RolloutError
from services.canary.offline import offline_gate
from services.canary.policy import RolloutPolicy


@dataclass
class RunOutcome:
    model: str
    stable: str
    canary: str
    promoted: bool
    reason: str
    analyses: list[Analysis] = field(default_factory=list)
    offline: GateResult | None = None
    failed: list[GateResult] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "stable": self.stable,
            "canary": self.canary,
            "result": "promoted" if self.promoted else "rolled_back",
            "reason": self.reason,
            "offline": self.offline.to_dict() if self.offline else None,
            "failed": [g.to_dict() for g in self.failed],
            "analyses": [a.to_dict() for a in self.analyses],
        }


class Rollout:
    def __init__(
        self,
        backend: RolloutBackend,
        policy: RolloutPolicy,
        analyzer: Analyzer | None,
        repository: Path | None = None,
        out: Callable[[str], None] = print,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        if analyzer is None and len(policy.steps) > 1 and _has_online_gates(policy):
            raise ValueError("the policy has online gates: a Prometheus URL is needed")
        self.backend, self.policy = backend, policy
        self.analyzer = analyzer if _has_online_gates(policy) else None
        self.repository = repository
        self.out, self.sleep, self.clock = out, sleep, clock

    def run(self, model: str, canary: str, stable: str | None = None) -> RunOutcome:
        current = self.backend.read().models.get(model)
        if current is None and stable is None:
            raise RolloutError(
                f"model {model!r} is not in the routing of {self.backend.target}: pass --stable"
            )
        stable = current.stable if current is not None else stable
        outcome = RunOutcome(model, stable, canary, promoted=False, reason="")
        self.out(f"rollout of {model} version {canary} over stable {stable} ({self.backend.target})")

        if self.policy.offline is not None and self.repository is not None:
            result = offline_gate(
                self.repository / model / stable, self.repository / model / canary, self.policy.offline
            )
            outcome.offline = result
            self.out(f"offline gate: {result.status.value.upper()}: {result.message}")
            if not result.passed:
                outcome.failed, outcome.reason = [result], f"offline gate failed: {result.message}"
                self.out(f"NOT STARTED: {outcome.reason}")
                return outcome
        elif self.policy.offline is not None:
            self.out("offline gate: skipped (no model repository given)")

        started = False
        try:
            steps = self.policy.steps
            for i, step in enumerate(steps, 1):
                label = f"step {i}/{len(steps)}"
                if step.weight >= 100:
                    route = self.backend.promote(model)
                    outcome.promoted, outcome.reason = True, "every gate passed"
                    self.out(f"{label}: PROMOTED {model} version {route.stable} to stable")
                    return outcome
                shadow = self.policy.shadow_of(step)
                if not started:
                    self.backend.start(model, canary, step.weight, shadow, stable=stable)
                    started = True
                else:
                    self.backend.set_weight(model, step.weight, shadow)
                if step.weight == 0:
                    self.out(f"{label}: canary {canary} shadow only (no client sees it), shadow {shadow:g}%")
                else:
                    self.out(f"{label}: canary {canary} at {step.weight:g}% of traffic, shadow {shadow:g}%")
                analysis = self._bake_and_analyse(label, model, stable, canary, step)
                if analysis is None:
                    continue
                outcome.analyses.append(analysis)
                if analysis.verdict != Status.PASS:
                    failed = analysis.failed() or [r for r in analysis.results if r.status != Status.PASS]
                    outcome.failed = failed
                    if analysis.verdict == Status.FAIL:
                        outcome.reason = "; ".join(f"{g.name}: {g.message}" for g in failed)
                    else:
                        outcome.reason = "not enough evidence: " + "; ".join(
                            f"{g.name}: {g.message}" for g in failed
                        )
                    self._rollback(model, f"{label} {analysis.verdict.value}: {outcome.reason}")
                    return outcome
            raise AssertionError("a validated policy ends with a step of weight 100")
        except BaseException as e:
            if started and not outcome.promoted and not outcome.reason:
                outcome.reason = f"interrupted: {type(e).__name__}: {e}"
                self._rollback(model, outcome.reason)
                if isinstance(e, KeyboardInterrupt | RolloutError):
                    return outcome
            raise

    def _rollback(self, model: str, why: str) -> None:
        route = self.backend.rollback(model)
        self.out(f"ROLLED BACK {model}: all traffic on stable {route.stable}")
        self.out(f"  because {why}")

    def _bake_and_analyse(self, label: str, model: str, stable: str, canary: str, step) -> Analysis | None:
        """The step's final analysis (None when the policy has no online gates: the bake alone decides)."""
        window = self.policy.window_of(step)
        bake = self.policy.bake_of(step)
        analysis = Analysis(model, stable, canary, window)
        for attempt in range(self.policy.max_extra_bakes + 1):
            self._bake(label, bake if attempt == 0 else max(bake, 1.0), model, canary)
            if self.analyzer is None:
                self.out(f"{label}: no online gates in the policy, baked only")
                return None
            analysis = self.analyzer.analyze(model, stable, canary, window)
            self.out(analysis.table())
            if analysis.verdict != Status.INCONCLUSIVE:
                return analysis
            if attempt < self.policy.max_extra_bakes:
                self.out(f"{label}: inconclusive, baking again ({attempt + 1}/{self.policy.max_extra_bakes})")
        return analysis

    def _bake(self, label: str, seconds: float, model: str, canary: str) -> None:
        start = self.clock()
        next_note = start
        while (elapsed := self.clock() - start) < seconds:
            if self.clock() >= next_note:
                self.out(f"{label}: baking {elapsed:.0f}/{seconds:.0f} s")
                next_note += self.policy.progress_every
            self.sleep(min(self.policy.progress_every, seconds - elapsed, 1.0))
        route = self.backend.status(model)
        if route.canary != canary:
            raise RolloutError(
                f"{model}: the routing changed under the rollout (canary is now {route.canary})"
            )


def _has_online_gates(policy: RolloutPolicy) -> bool:
    return any(getattr(policy.gates, name) is not None for name in type(policy.gates).model_fields)
