"""The crossval stage: grouped, stratified k-fold cross-validation on the train and val images.

For sets too small for one split to say much (a few hundred images, where one
test split's accuracy swings by +-0.1). The non-test images are cut into
``crossval.folds`` folds: whole near-duplicate groups, each class spread evenly.
Fold i's model trains on the other folds, early-stopping on a val share of them
(``split.fractions``' val against train, so it learns as the main model does),
and predicts fold i, which it never saw. The test split is never read.

Writes ``reports/crossval/``: ``metrics.json`` (accuracy, ROC AUC and loss as
means over folds, and accuracy's sd: the columns `dvc metrics show` has room
for), ``details.json`` (every metric's mean and sd over folds, every fold, the
pooled out-of-fold figures with their bootstrap intervals), ``oof.csv`` (sha256, label, probability,
fold: one row per image, each predicted by the one model that did not train on
it) and ``plots/folds.png``. An interrupted run keeps its finished folds
(``models/.crossval/``) and goes on from the next. ``crossval.folds: 0`` writes
the files empty, at no cost.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

from pipeline.config.crossval import CrossvalParams
from pipeline.config.evaluate import EvaluateParams
from pipeline.config.loader import load_sections
from pipeline.config.split import SplitParams
from pipeline.config.train import TrainParams
from pipeline.contracts.predictions import write_oof
from pipeline.ml.crossval import Settings, cross_validate, summarise
from pipeline.runtime.entry import main
from pipeline.runtime.log import load_tensorflow
from pipeline.runtime.outputs import replacing_files, write_metrics

logger = logging.getLogger(__name__)
SHOWN = ("accuracy", "roc_auc", "loss")  # in metrics.json, as means over folds


def write_reports(out: Path, results: list[dict], class_names: list[str],
                  params: Settings) -> dict | None:
    """``metrics.json``, ``details.json``, ``oof.csv`` and ``plots/`` in ``out``; with no
    results (crossval off) the same files, empty. Returns the details."""
    from pipeline.ml import plots

    details = summarise(results, class_names, params) if results else None
    with replacing_files(out) as tmp:
        (tmp / "plots").mkdir()
        if details is None:
            write_metrics(tmp / "metrics.json", {"images": 0})
            # a file in the plots folder, or DVC warns on every run that it is empty
            (tmp / "plots" / "README.txt").write_text(
                "Cross-validation is off (crossval.folds: 0), so there is no plot of its folds.\n")
            (tmp / "details.json").write_text(json.dumps({"folds": 0, "note": (
                "off: set crossval.folds in params.yaml (5 is usual) to cross-validate")}) + "\n")
        else:
            # Means over folds in evaluate's columns of `dvc metrics show`, and one sd beside
            # them: the table stays readable; every sd and the pooled figures are in details.
            write_metrics(tmp / "metrics.json", {
                **{k: details["mean"][k] for k in SHOWN}, "accuracy_sd": details["sd"]["accuracy"],
                "images": details["images"]})
            (tmp / "details.json").write_text(json.dumps(details, indent=2, sort_keys=True) + "\n")
            plots.folds(details, tmp / "plots" / "folds.png")
        write_oof(tmp / "oof.csv", results, class_names)
        shutil.rmtree(out / "plots", ignore_errors=True)  # a folder: replaced whole
    return details


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--records", type=Path, default=Path("data/tfrecords"))
    parser.add_argument("--split", type=Path, default=Path("data/split/split.jsonl"))
    parser.add_argument("--work", type=Path, default=Path("models/.crossval"),
                        help="finished folds, kept until the reports are written")
    parser.add_argument("--out", type=Path, default=Path("reports/crossval"))


def run(args: argparse.Namespace) -> None:
    params = load_sections(args.params, seed=int, crossval=CrossvalParams, train=TrainParams,
                           split=SplitParams, evaluate=EvaluateParams)
    folds = params.crossval.folds
    if not folds:
        write_reports(args.out, [], ["", ""], params)
        logger.info("crossval: off (crossval.folds is 0); on a few hundred images set it to 5 "
                    "for figures one split cannot give; empty reports in %s", args.out)
        return
    from pipeline.contracts import features

    load_tensorflow()  # its native start-up notices go to the debug log
    class_names = features.read_meta(args.records)["class_names"]
    results, place = cross_validate(args.records, args.split, args.work, params, folds)
    details = write_reports(args.out, results, class_names, params)
    shutil.rmtree(place, ignore_errors=True)  # the reports hold it all now
    assert details is not None
    pooled, bound = details["pooled"], details["pooled"]["intervals"]["accuracy"]
    logger.info("crossval: %d folds, %d images: accuracy %.3f +- %.3f over folds (pooled %.3f, "
                "%.0f%% interval %.3f-%.3f), ROC AUC %.3f +- %.3f; reports in %s", folds,
                details["images"], details["mean"]["accuracy"], details["sd"]["accuracy"],
                pooled["accuracy"], 100 * params.evaluate.confidence, bound["low"], bound["high"],
                details["mean"]["roc_auc"], details["sd"]["roc_auc"], args.out)


if __name__ == "__main__":  # as dvc.yaml runs it: under its own name, for its logger
    sys.exit(main(__spec__.name))
