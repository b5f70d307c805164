"""Uncertainty of test figures: a seeded, stratified percentile bootstrap of each metric,
of the ROC curve, and of the paired difference between two models on the same images.

Stratified: each resample draws, with replacement, as many images of each class as the
test split has, so no resample lacks a class (ROC AUC, precision and recall stay
defined) and the class balance is the split's. Percentile intervals: the
``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of the resampled values.
"""

from __future__ import annotations

import numpy as np

from pipeline.contracts.metrics import LOWER_IS_BETTER
from pipeline.ml.curves import roc_auc, roc_curve

METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc", "loss")  # those resampled


def resample_indices(actual: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """``(resamples, n)`` indices, each row a stratified resample of ``actual``'s images."""
    rng = np.random.default_rng(seed)
    columns = [rng.choice(np.flatnonzero(actual == label), (resamples, int((actual == label).sum())))
               for label in np.unique(actual)]
    return np.concatenate(columns, axis=1)


def metric_values(actual: np.ndarray, probability: np.ndarray, threshold: float,
                  rows: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric on every resample (``rows`` from :func:`resample_indices`); the positive
    class is label 1, as in the headline figures."""
    truth, prob = actual[rows].astype(bool), probability[rows]
    predicted = prob >= threshold
    tp = (predicted & truth).sum(axis=1)
    fp = (predicted & ~truth).sum(axis=1)
    fn = (~predicted & truth).sum(axis=1)
    precision = tp / np.maximum(tp + fp, 1)
    recall = tp / np.maximum(tp + fn, 1)
    total = precision + recall
    clipped = np.clip(prob, 1e-7, 1 - 1e-7)
    return {
        "accuracy": (predicted == truth).mean(axis=1), "precision": precision, "recall": recall,
        "f1": np.divide(2 * precision * recall, total, out=np.zeros_like(total), where=total > 0),
        "roc_auc": np.array([roc_auc(t, p) for t, p in zip(truth, prob, strict=True)]),
        "loss": -(truth * np.log(clipped) + ~truth * np.log(1 - clipped)).mean(axis=1),
    }


def _bounds(values: np.ndarray, confidence: float) -> tuple[float, float]:
    low, high = np.quantile(values, [(1 - confidence) / 2, (1 + confidence) / 2])
    return round(float(low), 6), round(float(high), 6)


def intervals(actual: np.ndarray, probability: np.ndarray, threshold: float, resamples: int,
              confidence: float, seed: int) -> dict:
    """Each metric's interval, with how it was made."""
    values = metric_values(actual, probability, threshold,
                           resample_indices(actual, resamples, seed))
    return {"confidence": confidence, "resamples": resamples, "seed": seed,
            "method": "stratified percentile bootstrap over the test images",
            **{name: dict(zip(("low", "high"), _bounds(values[name], confidence), strict=True))
               for name in METRICS}}


def roc_band(actual: np.ndarray, probability: np.ndarray, resamples: int, confidence: float,
             seed: int, grid: int = 101) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False positive rates on a grid, and the interval of the true positive rate at each."""
    fpr_grid = np.linspace(0.0, 1.0, grid)
    curves = []
    for row in resample_indices(actual, resamples, seed):
        fpr, tpr, _ = roc_curve(actual[row], probability[row])
        curves.append(np.interp(fpr_grid, fpr, tpr))
    low, high = np.quantile(np.array(curves), [(1 - confidence) / 2, (1 + confidence) / 2], axis=0)
    return fpr_grid, low, high


def paired_difference(actual: np.ndarray, challenger: np.ndarray, champion: np.ndarray,
                      threshold: float, metric: str, resamples: int, confidence: float,
                      seed: int) -> dict:
    """Challenger minus champion in ``metric`` on the same images, resampled together: the
    difference, its interval, and the share of resamples in which the challenger is better
    (for a lower-is-better metric, lower). Ties count half."""
    rows = resample_indices(actual, resamples, seed)
    ours = metric_values(actual, challenger, threshold, rows)[metric]
    theirs = metric_values(actual, champion, threshold, rows)[metric]
    difference = ours - theirs
    better = -difference if metric in LOWER_IS_BETTER else difference
    whole = np.arange(len(actual))[None, :]
    point = float(metric_values(actual, challenger, threshold, whole)[metric][0]
                  - metric_values(actual, champion, threshold, whole)[metric][0])
    low, high = _bounds(difference, confidence)
    return {"metric": metric, "difference": round(point, 6), "low": low, "high": high,
            "probability_better": round(float((better > 0).mean() + 0.5 * (better == 0).mean()), 4),
            "resamples": resamples, "confidence": confidence, "seed": seed}
