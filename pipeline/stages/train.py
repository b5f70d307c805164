"""The train stage: fit the CNN on the train split, early-stopping on val, and keep the best epoch.

Outputs: ``models/train/model.keras`` (best weights), ``reports/train/history.csv``
(one row per epoch, for DVC plots; the first member's of ``train.members``),
``reports/train/members.csv`` (every member's epochs, its kept one marked, for
evaluate's learning curves), ``reports/train/metrics.json`` (train and val
figures of the best model, measured without augmentation or dropout, and their
gap: the overfitting signal) and TensorBoard logs. An interrupted run resumes
from its last finished epoch (Keras' BackupAndRestore, kept under
``models/.backup/`` and keyed by params and data).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pipeline.config.loader import load_sections
from pipeline.config.train import TrainParams, check_depth
from pipeline.contracts import features
from pipeline.ml.fit import train
from pipeline.runtime.entry import main
from pipeline.runtime.errors import UserError
from pipeline.runtime.log import load_tensorflow

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--records", type=Path, default=Path("data/tfrecords"))
    parser.add_argument("--models", type=Path, default=Path("models/train"))
    parser.add_argument("--reports", type=Path, default=Path("reports/train"))


def run(args: argparse.Namespace) -> None:
    load_tensorflow()  # its native start-up notices go to the debug log
    params = load_sections(args.params, seed=int, train=TrainParams)
    try:
        check_depth(features.read_meta(args.records)["image_size"], params.train)
    except ValueError as err:
        raise UserError(f"{args.params}: {err}") from None
    if params.train.init_from not in ("", "pretrain"):  # `pretrain` is a dvc.yaml dep; a path not
        logger.warning("train: train.init_from %s is read but not tracked by DVC: after replacing "
                       "that file, run `dvc repro -f -s train`, then `dvc repro`",
                       params.train.init_from)
    report = train(args.records, args.models, args.reports, params.train, params.seed)
    kept = f"best epoch {report.best_epoch} of {report.epochs_run}"
    if params.train.members > 1:  # the figures below are the averaged model's
        kept = f"{params.train.members} networks averaged (the first's {kept})"
    logger.info("train: %s on %s (%.1f images/s); val accuracy %.3f, train-val accuracy gap "
                "%.3f; model in %s", kept, report.device, report.images_per_second,
                report.val["accuracy"], report.gap["accuracy"], args.models / "model.keras")


if __name__ == "__main__":  # as dvc.yaml runs it: under its own name, for its logger
    sys.exit(main(__spec__.name))
