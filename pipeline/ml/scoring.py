"""A model's scores on a split's records, and the figures evaluate, crossval and promotion
report from them (accuracy ... loss, the confusion matrix, per-class figures)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.ml.curves import roc_auc
from pipeline.runtime.errors import UserError


@dataclass(frozen=True)
class Scores:
    """Test-split predictions: record ids, true class index, probability of class 1."""

    sha256: list[str]
    actual: np.ndarray
    probability: np.ndarray
    face_found: np.ndarray | None = None  # bool per image, when the records say it


def accuracy_with_interval(actual: np.ndarray, probability: np.ndarray, threshold: float,
                           resamples: int, confidence: float, seed: int) -> tuple[float, dict | None]:
    """Accuracy at ``threshold`` and its stratified bootstrap interval (None when the images
    hold one class only: there is nothing to stratify)."""
    from pipeline.ml.bootstrap import intervals

    accuracy = float(((probability >= threshold).astype(int) == actual).mean())
    if len(set(actual.tolist())) < 2:
        return accuracy, None
    return accuracy, intervals(actual, probability, threshold, resamples, confidence,
                               seed)["accuracy"]


def by_face(actual: np.ndarray, probability: np.ndarray, found: np.ndarray, threshold: float,
            resamples: int, confidence: float, seed: int) -> dict:
    """Accuracy with its bootstrap interval, and the share of the images, for the images with
    a face found and for those without: a model may be worth much less on one of them."""
    parts = {}
    for name, members in (("with_face", found), ("without_face", ~found)):
        chosen = np.flatnonzero(members)
        part = {"images": int(len(chosen)), "share": round(len(chosen) / max(len(found), 1), 6)}
        if len(chosen):
            accuracy, span = accuracy_with_interval(actual[chosen], probability[chosen], threshold,
                                                    resamples, confidence, seed)
            part["accuracy"] = round(accuracy, 6)
            part["accuracy_interval"] = {k: round(v, 6) for k, v in span.items()} if span else None
        parts[name] = part
    return parts


def summary(scores: Scores, class_names: list[str], threshold: float) -> dict:
    """Accuracy, precision, recall, F1, ROC AUC, loss, confusion matrix and per-class figures."""
    actual, prob = scores.actual, scores.probability
    predicted = (prob >= threshold).astype(int)
    matrix = np.zeros((2, 2), int)
    np.add.at(matrix, (actual, predicted), 1)
    per_class = {}
    for index, name in enumerate(class_names):
        tp = int(matrix[index, index])
        precision = tp / max(matrix[:, index].sum(), 1)
        recall = tp / max(matrix[index].sum(), 1)
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": round(precision, 6), "recall": round(recall, 6),
                           "f1": round(f1, 6), "support": int(matrix[index].sum())}
    clipped = np.clip(prob, 1e-7, 1 - 1e-7)
    loss = -np.mean(actual * np.log(clipped) + (1 - actual) * np.log(1 - clipped))
    positive = per_class[class_names[1]]
    return {
        "images": len(actual), "threshold": threshold, "positive_class": class_names[1],
        "accuracy": round(float(np.trace(matrix) / max(len(actual), 1)), 6),
        "precision": positive["precision"], "recall": positive["recall"], "f1": positive["f1"],
        "roc_auc": round(roc_auc(actual, prob), 6), "loss": round(float(loss), 6),
        "confusion_matrix": {"rows_actual_columns_predicted": class_names, "counts": matrix.tolist()},
        "per_class": per_class,
    }


def predict_test(model, records: Path, image_size: int, batch_size: int) -> Scores:
    from pipeline.contracts import features

    shas, actual, probs, found = [], [], [], []
    for batch in features.dataset(records, "test", image_size).batch(batch_size):
        probs.append(np.asarray(model(features.model_inputs(batch), training=False),
                                dtype=np.float64)[:, 0])
        actual.append(batch["label"].numpy())
        shas += [s.decode() for s in batch["sha256"].numpy()]
        if "face_found" in batch:
            found.append(batch["face_found"].numpy().astype(bool))
    if not shas:
        raise UserError(f"{records / features.META}: the test split is empty; scrape more images "
                        "or change split.fractions in params.yaml")
    probability = np.concatenate(probs)
    if not np.isfinite(probability).all():
        raise UserError(f"{records}: the model gives non-finite probabilities on "
                        f"{int((~np.isfinite(probability)).sum())} test images: it is broken "
                        "(did training diverge?); train it again (dvc repro train)")
    return Scores(shas, np.concatenate(actual).astype(int), probability,
                  np.concatenate(found) if found else None)
