"""Fitting the network: the input pipeline, the phases (frozen, then fine-tuning), the
callbacks in their order, resume after a crash, and the figures of the best epoch. The train
stage, crossval's folds and a tuning trial all fit through ``train()``."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import shutil
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.config.train import TrainParams
from pipeline.contracts.export import start_model
from pipeline.contracts.metrics import MEMBERS_FILE
from pipeline.runtime.errors import UserError
from pipeline.runtime.files import write_atomic

if TYPE_CHECKING:  # annotations only: keras is imported once TensorFlow is set up
    from pipeline.ml.callbacks import DivergenceGuard

logger = logging.getLogger(__name__)


EPOCH_METRICS = ("loss", "accuracy", "precision", "recall", "auc_approx")  # Keras', per epoch


REPORTED = ("loss", "accuracy", "precision", "recall", "auc")  # at the best epoch; auc exact


@dataclass(frozen=True)
class TrainReport:
    best_epoch: int  # 1-based
    epochs_run: int
    train: dict[str, float]
    val: dict[str, float]
    gap: dict[str, float]
    images_per_second: float
    device: str


def configure_runtime(seed: int) -> str:
    """Seeds everything; deterministic ops on CPU, mixed precision on a GPU. Returns the device."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    if tf.config.list_physical_devices("GPU"):
        keras.mixed_precision.set_global_policy("mixed_float16")
        return "GPU (mixed float16)"
    keras.mixed_precision.set_global_policy("float32")
    tf.config.experimental.enable_op_determinism()
    return "CPU (deterministic)"


def _inputs(records: Path, meta: dict, params: TrainParams, seed: int, first_epoch: int = 0,
            last_epoch: int | None = None, batch_size: int | None = None):
    """The train stream for epochs ``first_epoch`` to ``last_epoch`` (each epoch's order a
    function of the seed and the epoch alone, so a resumed run sees what an uninterrupted one
    would), its batches per epoch, and the val batches; ``batch_size`` is the global batch
    (train.batch_size unless the model is mirrored over several replicas)."""
    import tensorflow as tf

    from pipeline.contracts import features

    size, counts = meta["image_size"], meta["counts"]
    batch = batch_size or params.batch_size
    for split_name in ("train", "val"):
        if not sum(counts[split_name].values()):
            raise UserError(f"{records / features.META}: the {split_name} split is empty; scrape more "
                            "images or change split.fractions in params.yaml")
    train_images = sum(counts["train"].values())
    # Known cardinality: Keras then knows an epoch's length from the start (no "ran out of data").
    train = features.labelled(records, "train", size).apply(
        tf.data.experimental.assert_cardinality(train_images))
    face = features.face_size(meta)
    if train_images * (size * size + face * face) * 3 <= params.cache_max_mb * 2**20:
        train = train.cache()  # decoded once; later epochs read memory
    buffer = min(params.shuffle_buffer, train_images)

    def epoch(number: tf.Tensor) -> tf.data.Dataset:
        return train.shuffle(buffer, seed=number + seed * 1_000_003).batch(batch)

    last = params.epochs if last_epoch is None else last_epoch
    stream = tf.data.Dataset.range(first_epoch, last).flat_map(epoch).prefetch(tf.data.AUTOTUNE)
    val = (features.labelled(records, "val", size)
           .apply(tf.data.experimental.assert_cardinality(sum(counts["val"].values())))
           .batch(batch).cache())
    return stream, math.ceil(train_images / batch), val.prefetch(tf.data.AUTOTUNE)


def class_weights(counts: dict[str, int], class_names: list[str], mode: str) -> dict[int, float] | None:
    """Balanced weights n / (classes * n_c), so each class adds the same total to the loss."""
    if mode == "none":
        return None
    total = sum(counts.values())
    return {i: total / (len(class_names) * max(counts.get(name, 0), 1))
            for i, name in enumerate(class_names)}


def _backup_dir(model_dir: Path, records: Path, params: TrainParams, seed: int) -> Path:
    from pipeline.contracts import features

    key = hashlib.sha256(json.dumps([params.model_dump(), seed, features.meta_text(records)],
                                    sort_keys=True).encode()).hexdigest()[:16]
    return model_dir.parent / ".backup" / f"train-{key}"


def _refuse_divergence(guard, backup: Path, params: TrainParams) -> None:
    """A diverged run ships nothing: no model is written, and its resume state is dropped so
    the next run starts afresh instead of from NaN weights."""
    if guard.at is None:
        return
    shutil.rmtree(backup, ignore_errors=True)
    epoch, batch, loss = guard.at
    raise UserError(f"training diverged: the loss became {loss} at epoch {epoch}, batch {batch}; "
                    f"nothing was saved. Lower train.learning_rate ({params.learning_rate}) in "
                    "params.yaml, or check the records")


def _write_history(rows: list[dict], path: Path, lead: tuple[str, ...] = ()) -> None:
    """Per epoch figures as CSV; ``lead`` names whole-number columns put first."""
    whole = (*lead, "epoch")
    columns = [*whole, *[m for m in EPOCH_METRICS if m in rows[0]],
               *[f"val_{m}" for m in EPOCH_METRICS if f"val_{m}" in rows[0]],
               *(["val_loss_smoothed"] if "val_loss_smoothed" in rows[0] else []), "learning_rate"]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: (r[k] if k in whole else round(r[k], 6)) for k in columns} for r in rows)


@dataclass(frozen=True)
class Phase:
    """One ``fit``: epochs ``first`` to ``last`` (0-based, ``last`` excluded) at ``learning_rate``,
    the body frozen (``from_layer`` None) or training from ``from_layer`` on ("" = all)."""

    number: int
    first: int
    last: int
    learning_rate: float
    from_layer: str | None

    @property
    def state(self) -> str:
        return "state" if self.from_layer is not None else f"state-{self.number}"


def phases(params: TrainParams) -> list[Phase]:
    """The frozen phase (train.fine_tune.frozen_epochs, at train.learning_rate) if any, then the
    rest of train.epochs with the body training from fine_tune.from_layer (at fine_tune's rate
    after a frozen phase, else at train.learning_rate)."""
    frozen, tune = params.fine_tune.frozen_epochs, params.fine_tune
    if not frozen:
        return [Phase(1, 0, params.epochs, params.learning_rate, tune.from_layer)]
    return [Phase(1, 0, frozen, params.learning_rate, None),
            Phase(2, frozen, params.epochs, tune.learning_rate, tune.from_layer)]


@dataclass(frozen=True)
class Callbacks:
    """A phase's callbacks in the order Keras runs them, and the guard ``train`` asks afterwards."""

    guard: DivergenceGuard
    ordered: list


def _callbacks(backup: Path, tensorboard: Path, params: TrainParams, phase: Phase,
               validation: list) -> Callbacks:
    """Resume, keep the best epoch, stop early, lower the rate, log. Order matters: the guard
    first; what adds to an epoch's logs (the val figures, the smoothed val loss) before what
    reads them. A frozen phase only warms the head: it neither stops early nor lowers the rate."""
    import keras

    from pipeline.ml import callbacks

    log_path, monitor = backup / "epochs.json", monitored(params)
    state = backup / phase.state
    # A resumed run keeps the best epoch it already has unless a new one beats it.
    done = json.loads(log_path.read_text()) if log_path.exists() else []
    stopping = keras.callbacks.EarlyStopping(
        monitor=monitor, mode="min", patience=params.early_stopping_patience,
        restore_best_weights=True, start_from_epoch=params.min_epochs)
    plateau = keras.callbacks.ReduceLROnPlateau(
        monitor=monitor, mode="min", factor=params.reduce_lr_factor, patience=params.reduce_lr_patience,
        min_lr=params.min_learning_rate)
    kept = [stopping, plateau] if phase.from_layer is not None else []
    guard = callbacks.DivergenceGuard()
    return Callbacks(guard, [
        guard,
        *validation,  # the val figures, when fit does not measure them itself
        callbacks.SmoothedValLoss(log_path, params.val_loss_smoothing),
        keras.callbacks.BackupAndRestore(str(state)),
        # weights only: no model config; the optimizer's state is not wanted back (train
        # silences Keras' warning when another phase's optimizer does not match it)
        keras.callbacks.ModelCheckpoint(str(backup / "best.weights.h5"), monitor=monitor,
                                        mode="min", save_best_only=True, save_weights_only=True,
                                        initial_value_threshold=min(
                                            (r[monitor] for r in done), default=None)),
        *kept,
        callbacks.ResumedCounters(backup / "counters.json", kept, _resume_epoch(state)),
        keras.callbacks.TensorBoard(str(tensorboard), write_graph=False),
        callbacks.EpochLog(log_path, params.epochs),
    ])


def monitored(params: TrainParams) -> str:
    """The figure early stopping, the plateau and the kept epoch follow."""
    return "val_loss_smoothed" if params.val_loss_smoothing else "val_loss"


def _resume_epoch(state: Path) -> int:
    """The epoch BackupAndRestore will resume from, out of its ``state`` folder (0: none)."""
    try:
        return int(json.loads((state / "training_metadata.json").read_text())["epoch"])
    except (OSError, ValueError, KeyError):
        return 0


def _figures(model, records: Path, meta: dict, val_data, batch_size: int) -> dict[str, dict]:
    """Figures of the best model in inference mode (no augmentation or dropout), so the
    train-val gap measures overfitting rather than the cost of regularisation; AUC exact."""
    import numpy as np
    import tensorflow as tf

    from pipeline.contracts import features
    from pipeline.ml.curves import roc_auc

    # Known cardinality, as in _inputs: without it Keras warns that the input "ran out of data".
    train_eval = features.labelled(records, "train", meta["image_size"]).apply(
        tf.data.experimental.assert_cardinality(sum(meta["counts"]["train"].values()))
    ).batch(batch_size)
    figures = {}
    for name, data in (("train", train_eval), ("val", val_data)):
        scores = model.evaluate(data, return_dict=True, verbose=0)
        pairs = [(y.numpy().ravel(), np.asarray(model.predict_on_batch(x)).ravel())
                 for x, y in data]  # one pass: labels and scores in the same order
        scores["auc"] = roc_auc(np.concatenate([y for y, _ in pairs]),
                                np.concatenate([p for _, p in pairs]))
        figures[name] = {m: round(float(scores[m]), 6) for m in REPORTED}
    return figures


def _write_reports(report: TrainReport, members: list[_Member], reports_dir: Path) -> None:
    """history.csv: the first member's epochs (what `dvc plots` draws); members.csv: every
    member's, with its seed and its kept (best) epoch marked, for the learning curves plot."""
    reports_dir.mkdir(parents=True, exist_ok=True)
    _write_history(members[0].rows, reports_dir / "history.csv")
    _write_history([{"member": number, "seed": member.seed,
                     "kept": int(row["epoch"] == member.best_epoch), **row}
                    for number, member in enumerate(members, start=1) for row in member.rows],
                   reports_dir / MEMBERS_FILE, lead=("member", "seed", "kept"))
    metrics = {k: v for k, v in asdict(report).items() if k not in ("images_per_second", "device")}
    write_atomic(reports_dir / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True) + "\n")


def _strategy(params: TrainParams):
    """tf.distribute's strategy for train.distribute: mirrored over the GPUs present, else over
    the logical CPU devices (one, unless a caller split the CPU), or the default one."""
    import tensorflow as tf

    if params.distribute == "none":
        return tf.distribute.get_strategy()
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return tf.distribute.MirroredStrategy([d.name for d in devices])


def _fit_phase(model, phase: Phase, records: Path, meta: dict, params: TrainParams, seed: int,
               backup: Path, tensorboard: Path, strategy) -> tuple[int, float]:
    """Run one phase (resuming it if it was cut short); returns its epochs run and seconds."""
    from pipeline.ml.model import compile_model, keeps_norm_statistics, set_trainable

    done = backup / f"phase-{phase.number}.weights.h5"
    if phase.from_layer is None and done.exists():  # a finished frozen phase of a resumed run
        model.load_weights(done)
        return 0, 0.0
    set_trainable(model, phase.from_layer, keeps_norm_statistics(params))
    with strategy.scope():
        compile_model(model, phase.learning_rate, params.label_smoothing)
        model.optimizer.build(model.trainable_variables)  # so a resumed run gets its state back
    global_batch = params.batch_size * strategy.num_replicas_in_sync
    first = max(phase.first, _resume_epoch(backup / phase.state))
    train_data, steps, val_data = _inputs(records, meta, params, seed, first, phase.last,
                                          global_batch)
    mirrored = strategy.num_replicas_in_sync > 1
    validation = []
    if mirrored:
        from pipeline.ml.callbacks import ValidationByPrediction

        validation = [ValidationByPrediction(val_data)]
    callbacks = _callbacks(backup, tensorboard, params, phase, validation)
    started = time.perf_counter()
    fitted = model.fit(train_data, validation_data=None if mirrored else val_data,
                       initial_epoch=phase.first, epochs=phase.last, steps_per_epoch=steps,
                       callbacks=callbacks.ordered,
                       class_weight=class_weights(meta["counts"]["train"], meta["class_names"],
                                                  params.class_weight),
                       shuffle=False, verbose=1 if sys.stdout.isatty() else 0)  # tf.data shuffles
    seconds = time.perf_counter() - started
    _refuse_divergence(callbacks.guard, backup, params)
    if phase.from_layer is None:
        model.save_weights(done)
    return len(fitted.epoch), seconds


def _face_network(start: Path | None, meta: dict, records: Path):
    """A two-view model's face view (records with a face view): the face network of
    ``train.init_from``, or a one-line UserError; None for a one-view model."""
    from pipeline.contracts import features
    from pipeline.ml.model import face_branch, load

    side = features.face_size(meta)
    if not side:
        return None
    if start is None:
        raise UserError(f"{records / features.META}: records with a face view (tfrecords.crop: "
                        "views) need a face network to see it; set train.init_from: pretrain "
                        "(the pretrain stage's, `happysad preset web-photos` does) or a face "
                        "model.keras")
    face = face_branch(load(start), start)
    if face.inputs[0].shape[1] != side:
        raise UserError(f"train.init_from: {start} takes {face.inputs[0].shape[1]} px faces, "
                        f"the records' face view is {side} px; set tfrecords.face_size: "
                        f"{face.inputs[0].shape[1]}")
    return face


def _started_model(params: TrainParams, meta: dict, records: Path, seed: int):
    """The network to fit, with train.init_from's weights: as its face view (records with
    one), else copied in by layer name (warm start)."""
    from pipeline.ml.model import build_model, warm_start

    start = start_model(params.init_from)
    face = _face_network(start, meta, records)
    model = build_model(params, meta["image_size"], seed, face=face)
    if face is not None:
        logger.info("train: two views, the whole picture and the face; the face network "
                    "starts from %s", start)
    elif start is not None:
        taken = warm_start(model, start)
        logger.info("train: %d layers start from %s", taken, start)
    return model


@dataclass(frozen=True)
class _Member:
    """One network of ``train.members``, at its best epoch, in inference form."""

    model: object  # keras.Model
    seed: int
    rows: list[dict]  # its epochs.json
    best_epoch: int  # 1-based
    epochs_run: int  # by this process (0 for a member a resumed run found finished)
    seconds: float
    backup: Path


def _fit_member(records: Path, meta: dict, model_dir: Path, reports_dir: Path,
                params: TrainParams, seed: int, number: int, strategy, device: str) -> _Member:
    """Fit member ``number`` (seed ``seed + number``; member 0 is the one network a run with
    ``members: 1`` trains), resuming it if it was cut short; a finished member of several is
    kept in its backup folder, so a crash in a later one does not fit it again."""
    import keras

    from pipeline.ml.model import load, without_augmentation

    own_seed = seed + number
    backup = _backup_dir(model_dir, records, params, own_seed)
    backup.mkdir(parents=True, exist_ok=True)
    finished = backup / "member.keras"
    if finished.exists():
        rows = json.loads((backup / "epochs.json").read_text())
        return _Member(load(finished), own_seed, rows, _best(rows, params)["epoch"], 0, 0.0,
                       backup)
    if number:
        keras.utils.set_random_seed(own_seed)  # its own starting weights and draws
    with strategy.scope():
        model = _started_model(params, meta, records, own_seed)
    if not number:
        logger.info("training %s parameters (%s) on %s: %s", f"{model.count_params():,}",
                    params.backbone, device, meta["counts"]["train"])
    epochs_run, seconds = 0, 0.0
    # member 0's runs where a one-member run keeps them, the others' beside them as member-N
    tensorboard = reports_dir / "tensorboard" / (f"member-{number}" if number else "")
    for phase in phases(params):
        ran, took = _fit_phase(model, phase, records, meta, params, own_seed, backup,
                               tensorboard, strategy)
        epochs_run, seconds = epochs_run + ran, seconds + took
    rows = json.loads((backup / "epochs.json").read_text())
    with warnings.catch_warnings():  # the file holds the optimizer of the phase that saved it,
        # which a later phase's need not match, and which is not wanted back: weights only
        warnings.filterwarnings("ignore", "Skipping variable loading for optimizer")
        model.load_weights(backup / "best.weights.h5")  # the best epoch, also when run to the end
    inference = without_augmentation(model, params, meta["image_size"])
    if params.members > 1:
        inference.save(finished)
    return _Member(inference, own_seed, rows, _best(rows, params)["epoch"], epochs_run, seconds,
                   backup)


def _fit_members(records: Path, meta: dict, model_dir: Path, reports_dir: Path,
                 params: TrainParams, seed: int, strategy, device: str) -> list[_Member]:
    """Every member in turn; before each after the first, a line with the time left for
    it and the rest (the epoch lines' ETA is the member's own)."""
    from pipeline.runtime.log import clock

    members: list[_Member] = []
    for number in range(params.members):
        trained = [m.seconds for m in members if m.epochs_run]  # one found finished took none
        if number:
            left = (f", about {clock(sum(trained) / len(trained) * (params.members - number))} "
                    "left for it and the rest" if trained else "")
            logger.info("train: member %d of %d (seed %d)%s", number + 1, params.members,
                        seed + number, left)
        members.append(_fit_member(records, meta, model_dir, reports_dir, params, seed, number,
                                   strategy, device))
    return members


def _best(rows: list[dict], params: TrainParams) -> dict:
    return min(rows, key=lambda r: (r[monitored(params)], r["epoch"]))


def train(records: Path, model_dir: Path, reports_dir: Path, params: TrainParams,
          seed: int) -> TrainReport:
    """Fit ``train.members`` networks (seeds ``seed``, ``seed + 1``...), each kept at its best
    epoch by val_loss, and write the model (their probabilities averaged, when there are
    several), the members' histories, and the saved model's metrics."""
    from pipeline.contracts import features
    from pipeline.ml.model import compile_model, ensemble

    meta = features.read_meta(records)
    device = configure_runtime(seed)
    strategy = _strategy(params)
    if strategy.num_replicas_in_sync > 1:
        device += f", mirrored over {strategy.num_replicas_in_sync} replicas"
    members = _fit_members(records, meta, model_dir, reports_dir, params, seed, strategy, device)
    if len(members) > 1:
        logger.info("train: %d members, best epochs %s; the saved model averages them",
                    len(members), [m.best_epoch for m in members])
    inference = ensemble([m.model for m in members])
    # saved uncompiled: no optimizer in the file, so loading it never warns "Skipping variable
    # loading for optimizer" (every reader loads with compile=False and needs none)
    _save(inference, meta, model_dir)
    compile_model(inference, params.learning_rate)  # for the figures below
    _, _, val_data = _inputs(records, meta, params, seed)
    figures = _figures(inference, records, meta, val_data, params.batch_size)
    gap = {"accuracy": round(figures["train"]["accuracy"] - figures["val"]["accuracy"], 6),
           "loss": round(figures["val"]["loss"] - figures["train"]["loss"], 6),
           "auc": round(figures["train"]["auc"] - figures["val"]["auc"], 6)}
    train_count = sum(meta["counts"]["train"].values())
    epochs_run, seconds = sum(m.epochs_run for m in members), sum(m.seconds for m in members)
    first = members[0]
    report = TrainReport(best_epoch=first.best_epoch, epochs_run=len(first.rows),
                         train=figures["train"], val=figures["val"], gap=gap,
                         images_per_second=train_count * epochs_run / max(seconds, 1e-9),
                         device=device)
    _write_reports(report, members, reports_dir)
    for member in members:
        shutil.rmtree(member.backup, ignore_errors=True)  # finished: nothing left to resume
    return report


def _save(model, meta: dict, model_dir: Path) -> None:
    """The model, and the input contract that predict and the model card read beside it."""
    model_dir.mkdir(parents=True, exist_ok=True)
    model.save(model_dir / "model.keras")
    contract = {k: meta[k] for k in ("image_size", "channels", "class_names", "resize", "pixels")}
    contract["crop"] = meta.get("crop", {"kind": "none"})  # records written before crops: none
    write_atomic(model_dir / "input.json", json.dumps(contract, indent=2, sort_keys=True) + "\n")
