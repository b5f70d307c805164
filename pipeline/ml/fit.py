"""Training, start to end: the train stage, crossval's folds and a tuning trial all fit
through ``train()``. The parts, each a module of its own: ``device`` (seeds, precision, the
strategy), ``inputs`` (the batches), ``phases`` (one ``fit`` and its callbacks, resumed),
``members`` (the networks of ``train.members``), ``report`` (the figures and history)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from pipeline.config.train import TrainParams
from pipeline.contracts import features
from pipeline.ml.context import FitContext
from pipeline.ml.report import TrainReport
from pipeline.runtime.files import write_atomic

logger = logging.getLogger(__name__)


def train(records: Path, model_dir: Path, reports_dir: Path, params: TrainParams,
          seed: int) -> TrainReport:
    """Fit ``train.members`` networks (seeds ``seed``, ``seed + 1``...), each kept at its best
    epoch by val_loss, and write the model (their probabilities averaged, when there are
    several), the members' histories, and the saved model's metrics."""
    from pipeline.ml import device, report
    from pipeline.ml.inputs import counted
    from pipeline.ml.members import fit_members
    from pipeline.ml.model import compile_model
    from pipeline.ml.network import ensemble

    meta = features.read_meta(records)
    computes = device.configure_runtime(seed)
    strategy = device.strategy(params)
    if strategy.num_replicas_in_sync > 1:
        computes += f", mirrored over {strategy.num_replicas_in_sync} replicas"
    run = FitContext(records, meta, model_dir, reports_dir, params, seed, strategy, computes)
    members = fit_members(run)
    if len(members) > 1:
        logger.info("train: %d members, best epochs %s; the saved model averages them",
                    len(members), [m.best_epoch for m in members])
    inference = ensemble([m.model for m in members])
    # saved uncompiled: no optimizer in the file, so loading it never warns "Skipping variable
    # loading for optimizer" (every reader loads with compile=False and needs none)
    save(inference, meta, model_dir)
    compile_model(inference, params.learning_rate)  # for the figures below
    found = report.figures(inference, {split: counted(records, meta, split, params.batch_size)
                                       for split in ("train", "val")})
    train_count = sum(meta["counts"]["train"].values())
    epochs_run, seconds = sum(m.epochs_run for m in members), sum(m.seconds for m in members)
    first = members[0]
    result = TrainReport(best_epoch=first.best_epoch, epochs_run=len(first.rows),
                         train=found["train"], val=found["val"], gap=report.gap(found),
                         images_per_second=train_count * epochs_run / max(seconds, 1e-9),
                         device=computes)
    report.write_reports(result, members, reports_dir)
    for member in members:
        shutil.rmtree(member.backup, ignore_errors=True)  # finished: nothing left to resume
    return result


def save(model, meta: dict, model_dir: Path) -> None:
    """The model, and the input contract that predict and the model card read beside it."""
    model_dir.mkdir(parents=True, exist_ok=True)
    model.save(model_dir / "model.keras")
    contract = {k: meta[k] for k in ("image_size", "channels", "class_names", "resize", "pixels")}
    contract["crop"] = meta.get("crop", {"kind": "none"})  # records written before crops: none
    write_atomic(model_dir / "input.json", json.dumps(contract, indent=2, sort_keys=True) + "\n")
