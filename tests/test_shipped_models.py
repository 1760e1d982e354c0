"""The committed default models (models/shipped/) meet the hand-over targets on dev, served through Paddle
Inference: most angry customer messages reach the recorded P(negative) threshold, plain questions do not, and the
intent model rarely calls a plain question a complaint or a request for a human."""

import json
from pathlib import Path

import numpy as np
import pytest

from models.handoff_report import (
    HANDOFF_INTENTS,
    HANDOFF_MIN_CONFIDENCE,
    p_negative,
    plain_questions,
    sentiment_populations,
)
from services.runtime.repository import ModelRepository

pytestmark = pytest.mark.slow

SHIPPED = Path(__file__).resolve().parent.parent / "models" / "shipped"
DEV = Path(__file__).resolve().parent.parent / "data" / "sentiment" / "dev.jsonl"


@pytest.fixture(scope="module")
def threshold() -> float:
    report = json.loads((SHIPPED / "sentiment" / "handoff.json").read_text("utf-8"))
    return report["sentiment"]["proposed_threshold"]


@pytest.fixture(scope="module")
def populations() -> dict[str, list[str]]:
    return sentiment_populations(DEV)


def test_sentiment_has_a_neutral_class():
    config = ModelRepository(SHIPPED).config("sentiment")
    assert config.labels == ["negative", "neutral", "positive"]
    assert config.outputs[0].dims == [-1, 3]


def test_angry_messages_are_handed_over(threshold, populations):
    # a regression guard at what version 3 reaches (69.8 % of 96 on dev; version 1: 12.5 % at its 0.98), not the
    # issue's target of 90 %, which this model does not meet (see models/shipped/README.md)
    scores = p_negative(SHIPPED / "sentiment", populations["angry_cs_messages"])
    assert len(scores) >= 70 and (scores >= threshold).mean() >= 0.65


def test_plain_questions_are_not_handed_over_for_sentiment(threshold, populations):
    scores = p_negative(SHIPPED / "sentiment", populations["neutral_cs_questions"])
    assert len(scores) >= 300 and (scores >= threshold).mean() <= 0.01


def test_plain_questions_are_rarely_handed_over_by_intent():
    from models.evaluate import open_version, predict
    from services.runtime.runner import PaddleRunner, RunnerSettings

    version = open_version(SHIPPED / "intent")
    questions = plain_questions()
    probs = predict(PaddleRunner(version, RunnerSettings(cpu_threads=1)), questions)
    top = probs.argmax(axis=1)
    handed = [
        version.labels[i] in HANDOFF_INTENTS and p[i] >= HANDOFF_MIN_CONFIDENCE
        for i, p in zip(top, probs, strict=True)
    ]
    assert len(questions) >= 300 and np.mean(handed) <= 0.03
