"""P(negative) is read by label name from the version that answered: a 2-label and a 3-label sentiment version
can serve side by side (canary), and a version whose label names are unknown is never read by position."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from services.gateway.clients.inference import ClassPrediction, ModelClient
from services.gateway.core.orchestrator import Orchestrator

SETTINGS = SimpleNamespace(negative_label="negative")


def negative(pred: ClassPrediction) -> float | None:
    return Orchestrator.negative_score(SimpleNamespace(settings=SETTINGS), pred)


def classes(labels: list[str] | None, row: list[float], worker_label: str) -> ClassPrediction:
    """What `ModelClient._classes` makes of one row from a version with these label names (None: unknown)."""
    client = SimpleNamespace(labels_of=lambda role, version: labels)
    outputs = {"probs": np.array([row], np.float32), "label": [worker_label]}
    return ModelClient._classes(client, "sentiment", outputs, "2")[0]


@pytest.mark.parametrize(
    "labels,row,top,expected",
    [
        (["negative", "positive"], [0.7, 0.3], "negative", 0.7),
        (["negative", "neutral", "positive"], [0.2, 0.7, 0.1], "neutral", 0.2),
        (["positive", "neutral", "negative"], [0.1, 0.3, 0.6], "negative", 0.6),  # another order
    ],
)
def test_p_negative_by_label_name_for_two_and_three_labels(labels, row, top, expected):
    assert negative(classes(labels, row, top)) == pytest.approx(expected, abs=1e-6)


def test_unknown_label_names_are_never_read_by_position():
    # a 3-label canary whose names the gateway has not learnt yet: the worker names only the top label
    neutral_top = classes(None, [0.25, 0.7, 0.05], "neutral")
    assert "negative" not in neutral_top.probs
    assert negative(neutral_top) is None  # not 1 - 0.7 = 0.3, a guess that ignores the third label
    assert negative(classes(None, [0.9, 0.05, 0.05], "negative")) == pytest.approx(0.9, abs=1e-6)


def test_no_sentiment_no_score():
    assert negative(None) is None
