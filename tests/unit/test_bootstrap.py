"""The uncertainty of test figures: bootstrap intervals and the paired promotion test."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config.promote import PromoteParams
from pipeline.ml.bootstrap import intervals, paired_difference, resample_indices, roc_band
from pipeline.tools.promote import decide_paired


def _case(n: int, accuracy: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n images, half of each class, exactly ``accuracy`` of them on the right side of 0.5."""
    rng = np.random.default_rng(seed)
    actual = np.arange(n) % 2
    right = rng.permutation(n) < round(accuracy * n)
    margin = rng.uniform(0.05, 0.45, n)
    probability = np.where(right == (actual == 1), 0.5 + margin, 0.5 - margin)
    return actual, probability


def test_the_interval_holds_the_true_value_and_narrows_as_n_grows() -> None:
    widths = []
    for n in (60, 240, 960):
        actual, probability = _case(n, 0.8)
        found = intervals(actual, probability, 0.5, 1000, 0.95, seed=3)
        assert found["accuracy"]["low"] <= 0.8 <= found["accuracy"]["high"]
        widths.append(found["accuracy"]["high"] - found["accuracy"]["low"])
        for name in ("precision", "recall", "f1", "roc_auc", "loss"):
            assert found[name]["low"] <= found[name]["high"]
    assert widths[0] > widths[1] > widths[2]
    assert widths[1] == pytest.approx(widths[0] / 2, rel=0.35)  # about 1 / sqrt(n)


def test_identical_seeds_give_identical_intervals_and_resamples_keep_the_classes() -> None:
    actual, probability = _case(50, 0.7)
    assert intervals(actual, probability, 0.5, 500, 0.95, 1) == intervals(
        actual, probability, 0.5, 500, 0.95, 1)
    assert intervals(actual, probability, 0.5, 500, 0.95, 1) != intervals(
        actual, probability, 0.5, 500, 0.95, 2)
    rows = resample_indices(actual[:-1], 200, 0)  # 25 of one class, 24 of the other
    assert ((actual[:-1][rows] == 1).sum(axis=1) == (actual[:-1] == 1).sum()).all()
    grid, low, high = roc_band(actual, probability, 300, 0.95, 0)
    assert len(grid) == len(low) == len(high) and (low <= high).all()


def test_a_clearly_better_challenger_is_promoted_and_noise_is_not() -> None:
    rule = PromoteParams(metric="loss", margin=0.0, confidence=0.9)
    actual, champion = _case(80, 0.75, seed=1)
    sharper = np.where(actual == 1, 0.5 + (champion - 0.5) * 0.2 + 0.3, 0.5 + (champion - 0.5) * 0.2 - 0.3)
    better = paired_difference(actual, np.clip(sharper, 0.01, 0.99), champion, 0.5, "loss",
                               1000, 0.95, 0)
    assert better["difference"] < 0 and better["probability_better"] > 0.99
    assert decide_paired(better, rule)[0]
    noise = np.clip(champion + np.random.default_rng(5).normal(0, 0.01, len(champion)), 0.01, 0.99)
    same = paired_difference(actual, noise, champion, 0.5, "loss", 1000, 0.95, 0)
    assert same["low"] < 0 < same["high"] and not decide_paired(same, rule)[0]


def test_a_perfect_champion_yields_to_a_challenger_with_lower_loss() -> None:
    """Both separate the classes perfectly (ROC AUC 1.0 each: no AUC can ever win), but the
    challenger is surer of every image: on loss it wins."""
    actual = np.arange(60) % 2
    champion = np.where(actual == 1, 0.7, 0.3)
    challenger = np.where(actual == 1, 0.95, 0.05)
    on_auc = paired_difference(actual, challenger, champion, 0.5, "roc_auc", 500, 0.95, 0)
    assert on_auc["difference"] == 0 and not decide_paired(
        on_auc, PromoteParams(metric="roc_auc", margin=0.0, confidence=0.9))[0]
    on_loss = paired_difference(actual, challenger, champion, 0.5, "loss", 500, 0.95, 0)
    promoted, reason = decide_paired(on_loss, PromoteParams(metric="loss", margin=0.0,
                                                            confidence=0.9))
    assert promoted and "beats" in reason
