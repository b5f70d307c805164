"""The networks of ``train.members``, each fitted from its own seed through its phases, kept
at its best epoch, and kept on disk once finished, so a crash in a later one does not fit an
earlier one again."""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

from pipeline.config.train import TrainParams
from pipeline.contracts import features
from pipeline.contracts.export import start_model
from pipeline.ml.context import FitContext
from pipeline.ml.phases import fit_phase, monitored, phases
from pipeline.runtime.errors import UserError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Member:
    """One network of ``train.members``, at its best epoch, in inference form."""

    model: object  # keras.Model
    seed: int
    rows: list[dict]  # its epochs.json
    best_epoch: int  # 1-based
    epochs_run: int  # by this process (0 for a member a resumed run found finished)
    seconds: float
    backup: Path


def best(rows: list[dict], params: TrainParams) -> dict:
    """The kept epoch's row: the least monitored val loss, the earliest of equals."""
    return min(rows, key=lambda r: (r[monitored(params)], r["epoch"]))


def face_network(start: Path | None, run: FitContext):
    """A two-view model's face view (records with a face view): the face network of
    ``train.init_from``, or a one-line UserError; None for a one-view model."""
    from pipeline.ml.model import load
    from pipeline.ml.transfer import face_branch

    side = features.face_size(run.meta)
    if not side:
        return None
    if start is None:
        raise UserError(f"{run.records / features.META}: records with a face view (tfrecords."
                        "crop: views) need a face network to see it; set train.init_from: "
                        "pretrain (the pretrain stage's, `happysad preset web-photos` does) or "
                        "a face model.keras")
    face = face_branch(load(start), start)
    if face.inputs[0].shape[1] != side:
        raise UserError(f"train.init_from: {start} takes {face.inputs[0].shape[1]} px faces, "
                        f"the records' face view is {side} px; set tfrecords.face_size: "
                        f"{face.inputs[0].shape[1]}")
    return face


def started_model(run: FitContext, seed: int):
    """The network to fit, with train.init_from's weights: as its face view (records with
    one), else copied in by layer name (warm start)."""
    from pipeline.ml.network import build_model
    from pipeline.ml.transfer import warm_start

    start = start_model(run.params.init_from)
    face = face_network(start, run)
    model = build_model(run.params, run.meta["image_size"], seed, face=face)
    if face is not None:
        logger.info("train: two views, the whole picture and the face; the face network "
                    "starts from %s", start)
    elif start is not None:
        taken = warm_start(model, start)
        logger.info("train: %d layers start from %s", taken, start)
    return model


def fit_member(run: FitContext, number: int) -> Member:
    """Fit member ``number`` (seed ``run.seed + number``; member 0 is the one network a run
    with ``members: 1`` trains), resuming it if it was cut short; a finished member of several
    is kept in its backup folder."""
    import keras

    from pipeline.ml.model import load
    from pipeline.ml.network import without_augmentation

    params, seed = run.params, run.seed + number
    backup = run.backup(seed)
    backup.mkdir(parents=True, exist_ok=True)
    finished = backup / "member.keras"
    if finished.exists():
        rows = json.loads((backup / "epochs.json").read_text())
        return Member(load(finished), seed, rows, best(rows, params)["epoch"], 0, 0.0, backup)
    if number:
        keras.utils.set_random_seed(seed)  # its own starting weights and draws
    with run.strategy.scope():  # type: ignore[attr-defined]
        model = started_model(run, seed)
    if not number:
        logger.info("training %s parameters (%s) on %s: %s", f"{model.count_params():,}",
                    params.backbone, run.device, run.meta["counts"]["train"])
    epochs_run, seconds = 0, 0.0
    # member 0's runs where a one-member run keeps them, the others' beside them as member-N
    tensorboard = run.reports_dir / "tensorboard" / (f"member-{number}" if number else "")
    for phase in phases(params):
        ran, took = fit_phase(run, model, phase, seed, backup, tensorboard)
        epochs_run, seconds = epochs_run + ran, seconds + took
    rows = json.loads((backup / "epochs.json").read_text())
    with warnings.catch_warnings():  # the file holds the optimizer of the phase that saved it,
        # which a later phase's need not match, and which is not wanted back: weights only
        warnings.filterwarnings("ignore", "Skipping variable loading for optimizer")
        model.load_weights(backup / "best.weights.h5")  # the best epoch, also when run to the end
    inference = without_augmentation(model, params, run.meta["image_size"])
    if params.members > 1:
        inference.save(finished)
    return Member(inference, seed, rows, best(rows, params)["epoch"], epochs_run, seconds, backup)


def fit_members(run: FitContext) -> list[Member]:
    """Every member in turn; before each after the first, a line with the time left for
    it and the rest (the epoch lines' ETA is the member's own)."""
    from pipeline.runtime.log import clock

    members: list[Member] = []
    count = run.params.members
    for number in range(count):
        trained = [m.seconds for m in members if m.epochs_run]  # one found finished took none
        if number:
            left = (f", about {clock(sum(trained) / len(trained) * (count - number))} "
                    "left for it and the rest" if trained else "")
            logger.info("train: member %d of %d (seed %d)%s", number + 1, count,
                        run.seed + number, left)
        members.append(fit_member(run, number))
    return members
