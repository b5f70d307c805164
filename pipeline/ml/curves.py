"""ROC and precision-recall curves, and the exact ROC AUC: one place for train and evaluate."""

from __future__ import annotations

import numpy as np


def _cumulative(actual: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Predicted-positive count, true positives and threshold at each distinct score, highest first."""
    order = np.argsort(-score, kind="stable")
    score, actual = score[order], actual[order]
    last = np.r_[np.flatnonzero(np.diff(score)), len(score) - 1]  # last index of each tie
    return last + 1, np.cumsum(actual)[last], score[last]


def roc_curve(actual: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False and true positive rates at every distinct threshold, from (0, 0) to (1, 1)."""
    predicted, tp, thresholds = _cumulative(actual, score)
    positives, negatives = max(actual.sum(), 1), max(len(actual) - actual.sum(), 1)
    return (np.r_[0.0, (predicted - tp) / negatives], np.r_[0.0, tp / positives],
            np.r_[np.inf, thresholds])


def precision_recall_curve(actual: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall at every distinct threshold, starting from (recall 0, precision 1)."""
    predicted, tp, _ = _cumulative(actual, score)
    return np.r_[1.0, tp / predicted], np.r_[0.0, tp / max(actual.sum(), 1)]


def roc_auc(actual: np.ndarray, score: np.ndarray) -> float:
    """The exact area under the ROC curve (ties count half), not Keras' binned estimate."""
    fpr, tpr, _ = roc_curve(actual, score)
    return float(np.trapezoid(tpr, fpr))
