"""The evaluate stage: the trained model on the test split, and nothing else.

Reads only ``test-*`` shards. Writes ``reports/evaluate/metrics.json`` (the
headline figures DVC shows: ``HEADLINE`` and the train-val accuracy gap),
``details.json`` (those plus the confusion matrix, per-class figures, best epoch,
every train-val gap, and accuracy with its interval for the test images with a face
found and for those without, with their shares), per-image ``predictions.csv`` and
``roc.csv`` / ``precision_recall.csv`` (DVC plots), and PNG plots: learning curves, confusion matrix, ROC and
precision-recall curves, and the most confident mistakes.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from pipeline.config.evaluate import EvaluateParams
from pipeline.config.faces import FacesParams
from pipeline.config.loader import load_sections
from pipeline.contracts.metrics import HEADLINE, MEMBERS_FILE, kept_epochs
from pipeline.contracts.predictions import write_csv, write_predictions
from pipeline.ml.curves import precision_recall_curve, roc_curve
from pipeline.ml.scoring import Scores, by_face, predict_test, summary
from pipeline.runtime.entry import main
from pipeline.runtime.errors import UserError
from pipeline.runtime.files import write_atomic
from pipeline.runtime.log import load_tensorflow
from pipeline.runtime.outputs import write_metrics

logger = logging.getLogger(__name__)
DETAILS_FILE = "details.json"


def _worst_mistakes(records: Path, image_size: int, scores: Scores, class_names: list[str],
                    threshold: float, count: int) -> tuple[list[np.ndarray], list[str]]:
    from pipeline.contracts import features

    wrong = (scores.probability >= threshold).astype(int) != scores.actual
    confidence = np.abs(scores.probability - threshold)
    chosen = sorted(np.flatnonzero(wrong), key=lambda i: -confidence[i])[:count]
    wanted = {scores.sha256[i]: i for i in chosen}
    found: dict[int, np.ndarray] = {}
    for record in features.dataset(records, "test", image_size):
        index = wanted.get(record["sha256"].numpy().decode())
        if index is not None:
            found[index] = record["image"].numpy()
    captions = [f"{class_names[scores.actual[i]]} as {class_names[1 - scores.actual[i]]}\n"
                f"p({class_names[1]}) = {scores.probability[i]:.2f} · {scores.sha256[i][:8]}"
                for i in chosen]
    return [found[i] for i in chosen], captions


def _write_tables(out: Path, scores: Scores, names: list[str], threshold: float) -> None:
    """Per-image predictions and the curves' data, for DVC plots."""
    predicted = (scores.probability >= threshold).astype(int)
    write_predictions(out / "predictions.csv", names,
                      zip(scores.sha256, scores.actual, predicted, scores.probability, strict=True))
    fpr, tpr, thresholds = roc_curve(scores.actual, scores.probability)
    write_csv(out / "roc.csv", ["fpr", "tpr", "threshold"],
               ((f"{f:.6f}", f"{t:.6f}", f"{min(h, 1.0):.6f}") for f, t, h in
                zip(fpr, tpr, thresholds, strict=True)))
    precision, recall = precision_recall_curve(scores.actual, scores.probability)
    write_csv(out / "precision_recall.csv", ["recall", "precision"],
               ((f"{r:.6f}", f"{p:.6f}") for r, p in zip(recall, precision, strict=True)))


def _draw(out: Path, records: Path, train_reports: Path, scores: Scores, metrics: dict,
          meta: dict, params: EvaluateParams, seed: int) -> None:
    from pipeline.ml import bootstrap, plots

    names, pictures = meta["class_names"], out / "plots"
    plots.learning_curves(train_reports / MEMBERS_FILE, pictures / "learning_curves.png")
    plots.confusion(np.array(metrics["confusion_matrix"]["counts"]), names, pictures / "confusion.png")
    fpr, tpr, _ = roc_curve(scores.actual, scores.probability)
    band = bootstrap.roc_band(scores.actual, scores.probability, params.bootstrap_resamples,
                              params.confidence, seed)
    auc, interval = metrics["roc_auc"], metrics["intervals"]["roc_auc"]
    plots.curve(fpr, tpr, "false positive rate", "true positive rate",
                f"ROC (AUC {auc:.3f}, {params.confidence:.0%} interval {interval['low']:.3f}-"
                f"{interval['high']:.3f})", pictures / "roc.png", diagonal=True, band=band)
    precision, recall = precision_recall_curve(scores.actual, scores.probability)
    plots.curve(recall, precision, f"recall ({names[1]})", f"precision ({names[1]})",
                "precision-recall", pictures / "precision_recall.png")
    images, captions = _worst_mistakes(records, meta["image_size"], scores, names,
                                       params.threshold, params.worst_mistakes)
    plots.mistakes(images, captions, pictures / "mistakes.png")


def _faces_found(records: Path, image_size: int, faces: FacesParams, sha256: list[str]) -> np.ndarray:
    """Whether the detector finds a face in each test image (in ``sha256``'s order), for
    records that do not say it (no face crop): searched on the records' own pixels."""
    from pipeline.contracts import features
    from pipeline.vision.faces import detect

    found = {r["sha256"].numpy().decode(): bool(detect(r["image"].numpy(), faces))
             for r in features.dataset(records, "test", image_size)}
    return np.array([found[sha] for sha in sha256], bool)


def evaluate(model_path: Path, records: Path, train_reports: Path, out: Path,
             params: EvaluateParams, seed: int = 0, faces: FacesParams | None = None) -> dict:
    """Score the test split and write metrics (with bootstrap intervals), per-image
    predictions and plots to ``out``; ``faces``: the detector that splits the figures by
    face found, when the records do not say it."""
    from pipeline.contracts import features
    from pipeline.ml import bootstrap
    from pipeline.ml.model import load

    meta = features.read_meta(records)
    if not model_path.exists():
        raise UserError(f"{model_path}: not found; run the train stage first (dvc repro train)")
    model = load(model_path)
    scores = predict_test(model, records, meta["image_size"], params.batch_size)
    metrics = summary(scores, meta["class_names"], params.threshold)
    metrics["intervals"] = bootstrap.intervals(scores.actual, scores.probability,
                                               params.threshold, params.bootstrap_resamples,
                                               params.confidence, seed)
    found = scores.face_found
    if found is None and faces is not None:
        found = _faces_found(records, meta["image_size"], faces, scores.sha256)
    if found is not None:
        metrics["by_face"] = {
            "detector": (meta.get("crop") or {}).get("faces", {}).get("detector")
            or (faces.detector if faces else None),
            **by_face(scores.actual, scores.probability, found, params.threshold,
                      params.bootstrap_resamples, params.confidence, seed)}
    trained = json.loads((train_reports / "metrics.json").read_text())
    metrics["best_epoch"] = trained["best_epoch"]
    metrics["best_epochs"] = kept_epochs(train_reports)  # one per member (train.members)
    metrics["train_val_gap"] = trained["gap"]
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / DETAILS_FILE, json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    write_metrics(out / "metrics.json", {**{k: metrics[k] for k in HEADLINE},
                                         "train_val_gap": metrics["train_val_gap"]["accuracy"],
                                         "images": metrics["images"]})
    _write_tables(out, scores, meta["class_names"], params.threshold)
    _draw(out, records, train_reports, scores, metrics, meta, params, seed)
    return metrics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, default=Path("models/train/model.keras"))
    parser.add_argument("--records", type=Path, default=Path("data/tfrecords"))
    parser.add_argument("--train-reports", type=Path, default=Path("reports/train"))
    parser.add_argument("--out", type=Path, default=Path("reports/evaluate"))


def run(args: argparse.Namespace) -> None:
    load_tensorflow()  # its native start-up notices go to the debug log
    params = load_sections(args.params, seed=int, evaluate=EvaluateParams, faces=FacesParams)
    metrics = evaluate(args.model, args.records, args.train_reports, args.out, params.evaluate,
                       params.seed, params.faces)
    low, high = metrics["intervals"]["accuracy"]["low"], metrics["intervals"]["accuracy"]["high"]
    logger.info("evaluate: test accuracy %.3f (%.0f%% interval %.3f-%.3f), ROC AUC %.3f, F1 %.3f "
                "on %d images; reports and plots in %s", metrics["accuracy"],
                100 * params.evaluate.confidence, low, high, metrics["roc_auc"], metrics["f1"],
                metrics["images"], args.out)
    faces = metrics.get("by_face")
    if faces:
        shown = {part: f"{faces[part]['accuracy']:.3f}" if "accuracy" in faces[part] else "-"
                 for part in ("with_face", "without_face")}
        logger.info("evaluate: with a face found (%.0f%% of test images) accuracy %s; without %s",
                    100 * faces["with_face"]["share"], shown["with_face"], shown["without_face"])


if __name__ == "__main__":  # as dvc.yaml runs it: under its own name, for its logger
    sys.exit(main(__spec__.name))
