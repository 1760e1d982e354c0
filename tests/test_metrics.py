import numpy as np
import pytest

from models.calibration import calibrated_probs, fit_temperature, nll
from models.metrics import classification_report, expected_calibration_error, retrieval_report


def test_ece_of_perfectly_calibrated_and_overconfident():
    # 10 predictions at confidence 0.8, 8 right: calibrated -> ECE 0
    probs = np.tile([0.8, 0.2], (10, 1))
    y = np.array([0] * 8 + [1] * 2)
    assert expected_calibration_error(probs, y) == pytest.approx(0.0)
    # same confidence, only 5 right -> gap 0.3
    y = np.array([0] * 5 + [1] * 5)
    assert expected_calibration_error(probs, y) == pytest.approx(0.3)


def test_temperature_scaling_fixes_overconfidence():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 2000)
    logits = rng.normal(size=(2000, 3))
    logits[np.arange(2000), y] += 1.0
    hot = logits * 5  # overconfident
    t = fit_temperature(hot, y)
    assert 3.0 < t < 7.0
    assert nll(hot, y, t) < nll(hot, y, 1.0)
    assert expected_calibration_error(calibrated_probs(hot, t), y) < expected_calibration_error(
        calibrated_probs(hot, 1.0), y
    )


def test_classification_report_fields():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    report = classification_report(probs, np.array([0, 1, 1]), ["a", "b"])
    assert report["accuracy"] == pytest.approx(0.6667, abs=1e-4)
    assert report["per_label"]["b"] == {"precision": 1.0, "recall": 0.5, "f1": 0.6667, "support": 2}


def test_retrieval_report():
    scores = np.array([[0.9, 0.1, 0.0], [0.5, 0.4, 0.3], [0.1, 0.2, 0.3]])
    report = retrieval_report(scores, [0, 2, 0])  # ranks 1, 3, 3
    assert report["recall_at_1"] == pytest.approx(1 / 3, abs=1e-4)
    assert report["recall_at_5"] == 1.0
    assert report["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 3) / 3, abs=1e-4)
