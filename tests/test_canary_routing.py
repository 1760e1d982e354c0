"""Routing file schema and the per-request split: stickiness, monotone growth, exact 0/100, shadow share."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from services.canary.routing import (
    BUCKETS,
    ModelRoute,
    Route,
    RoutingConfig,
    RoutingError,
    RoutingTable,
    bucket,
)

ROOT = Path(__file__).resolve().parent.parent
SESSIONS = [f"session-{i}" for i in range(20_000)]


def table(weight: float, shadow: float = 0, canary: str | None = "2", sticky: bool = True) -> RoutingTable:
    route = ModelRoute(stable="1", canary=canary, weight=weight, shadow=shadow, sticky=sticky)
    return RoutingTable(RoutingConfig(models={"intent": route}))


def test_same_session_same_version_every_time():
    t = table(30)
    for s in SESSIONS[:500]:
        first = t.decide("intent", s)
        assert all(t.decide("intent", s).version == first.version for _ in range(5))


# Buckets computed once (blake2b of "model\0session", 8 bytes, mod 10 000) and committed: a session must land in
# the same bucket on every process, host and release, or a rollout moves users between versions mid-conversation.
PINNED_BUCKETS = {
    ("intent", "abc"): 3337,
    ("intent", "session-0"): 7816,
    ("intent", "session-1"): 9754,
    ("intent", ""): 2603,
    ("sentiment", "abc"): 9142,
    ("faq", "会话-7"): 4004,
}


def test_bucket_is_stable_across_processes_and_models():
    assert {key: bucket(*key) for key in PINNED_BUCKETS} == PINNED_BUCKETS
    assert all(0 <= b < BUCKETS for b in PINNED_BUCKETS.values())
    assert [bucket("intent", s) for s in SESSIONS[:50]] != [bucket("sentiment", s) for s in SESSIONS[:50]]
    # another interpreter with a different hash seed (Python's own hash() would change here) agrees
    code = (
        "import json, sys\n"
        "from services.canary.routing import bucket\n"
        "print(json.dumps([bucket(m, s) for m, s in json.loads(sys.argv[1])]))"
    )
    keys = list(PINNED_BUCKETS)
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", code, json.dumps(keys)],
            env={**os.environ, "PYTHONHASHSEED": seed},
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert json.loads(out) == list(PINNED_BUCKETS.values()), f"PYTHONHASHSEED={seed}"


def test_weight_growth_is_monotone_and_moves_only_the_needed_share():
    on_canary = {}
    for w in (1, 5, 10, 25, 50, 75, 99):
        t = table(w)
        now = {s for s in SESSIONS if t.decide("intent", s).role == "canary"}
        for previous_weight, previous in on_canary.items():
            assert previous <= now, f"a session on canary at {previous_weight}% left it at {w}%"
        on_canary[w] = now
        share = len(now) / len(SESSIONS)
        assert abs(share - w / 100) < 0.015, (w, share)


def test_weights_0_and_100_are_exact():
    zero, hundred = table(0), table(100)
    assert all(zero.decide("intent", s) == Route("1", "stable", None) for s in SESSIONS)
    assert all(hundred.decide("intent", s) == Route("2", "canary", None) for s in SESSIONS)
    # without a session id too
    assert all(zero.decide("intent").version == "1" for _ in range(5000))
    assert all(hundred.decide("intent").version == "2" for _ in range(5000))


def test_no_session_id_is_split_randomly_at_the_weight():
    rng = random.Random(7)
    t = table(20)
    versions = [t.decide("intent", None, rng=rng).version for _ in range(20_000)]
    assert abs(versions.count("2") / len(versions) - 0.2) < 0.015
    # and it is not sticky: the same call flips
    assert len({t.decide("intent", "").version for _ in range(200)}) == 2


def test_sticky_false_ignores_the_session():
    t = table(50, sticky=False)
    assert len({t.decide("intent", "one-session").version for _ in range(200)}) == 2


def test_shadow_share_is_of_stable_served_requests_and_independent_of_the_split():
    rng = random.Random(3)
    t = table(25, shadow=40)
    routes = [t.decide("intent", s, rng=rng) for s in SESSIONS]
    canary = [r for r in routes if r.role == "canary"]
    stable = [r for r in routes if r.role == "stable"]
    assert all(r.shadow_version is None for r in canary), "a canary-served request is never mirrored"
    shadowed = sum(r.shadow_version == "2" for r in stable)
    assert abs(shadowed / len(stable) - 0.40) < 0.02
    assert all(r.version == "1" for r in stable)
    # shadow only, no live canary traffic
    only = table(0, shadow=100)
    assert all(only.decide("intent", s) == Route("1", "stable", "2") for s in SESSIONS[:1000])


def test_unknown_model_and_stable_only():
    assert table(10).decide("sentiment", "s") == Route(None, "stable", None)
    t = RoutingTable.from_yaml("models:\n  intent: {stable: 3}\n")
    assert t.decide("intent", "s") == Route("3", "stable", None)


def test_yaml_round_trip_and_int_versions():
    t = RoutingTable.from_yaml("models:\n  intent: {stable: 1, canary: 2, weight: 12.5, shadow: 10}\n")
    r = t.config.models["intent"]
    assert (r.stable, r.canary, r.weight, r.shadow, r.sticky) == ("1", "2", 12.5, 10.0, True)
    assert RoutingConfig.from_yaml(t.config.to_yaml()) == t.config
    assert RoutingConfig.from_yaml("models: {}") == RoutingConfig()
    with pytest.raises(RoutingError, match="empty routing file"):
        RoutingConfig.from_yaml("")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("models:\n  intent: {stable: 1, canary: 2, weight: 150}", "models.intent.weight: Input should be less than or equal to 100 (got 150)"),
        ("models:\n  intent: {stable: 1, canary: 2, shadow: -1}", "models.intent.shadow: Input should be greater than or equal to 0"),
        ("models:\n  intent: {stable: 1, weight: 10}", "models.intent: weight 10 / shadow 0 need a canary version"),
        ("models:\n  intent: {stable: 1, canary: 1}", "canary version '1' is the stable version"),
        ("models:\n  intent: {stabel: 1}", "models.intent.stable: Field required; models.intent.stabel: Extra inputs are not permitted"),
        ("models:\n  intent: {stable: 1, canary: 2, weight: 10.001}", "has more than two decimals"),
        ("models:\n  intent: {stable: 1, canary: 2, weight: ten}", "models.intent.weight: Input should be a valid number"),
        ("models: [intent]", "models: Input should be a valid dictionary"),
        ("- intent", "expected a mapping with a 'models' key, got list"),
        ("models: {intent: {stable: 1", "not valid YAML"),
        ("model:\n  intent: {stable: 1}", "model: Extra inputs are not permitted"),
    ],
)  # fmt: skip
def test_validation_errors_name_the_field(text, expected):
    with pytest.raises(RoutingError) as e:
        RoutingTable.from_yaml(text, "routing.yaml")
    assert str(e.value).startswith("routing.yaml: ")
    assert expected in str(e.value)


def test_route_lookup_error_lists_models():
    with pytest.raises(RoutingError, match=r"model 'faq' is not in the routing file \(intent\)"):
        table(0).config.route("faq")
