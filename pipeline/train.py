"""The train stage: fit the CNN on the train split, early-stopping on val, and keep the best epoch.

Outputs: ``models/train/model.keras`` (best weights), ``reports/train/history.csv``
(one row per epoch, for DVC plots), ``reports/train/metrics.json`` (train and val
figures of the best model, measured without augmentation or dropout, and their
gap: the overfitting signal) and TensorBoard logs. An interrupted run resumes
from its last finished epoch (Keras' BackupAndRestore, kept under
``models/.backup/`` and keyed by params and data).
"""

from __future__ import annotations

import argparse
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

from pipeline.errors import UserError
from pipeline.files import write_atomic
from pipeline.log import load_tensorflow
from pipeline.params import TrainParams, load_params

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

    from pipeline import features

    size, counts = meta["image_size"], meta["counts"]
    batch = batch_size or params.batch_size
    for split_name in ("train", "val"):
        if not sum(counts[split_name].values()):
            raise UserError(f"{records / 'meta.json'}: the {split_name} split is empty; scrape more "
                            "images or change split.fractions in params.yaml")
    train_images = sum(counts["train"].values())
    # Known cardinality: Keras then knows an epoch's length from the start (no "ran out of data").
    train = features.labelled(records, "train", size).apply(
        tf.data.experimental.assert_cardinality(train_images))
    if train_images * size * size * 3 <= params.cache_max_mb * 2**20:
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
    key = hashlib.sha256(json.dumps([params.model_dump(), seed, (records / "meta.json").read_text()],
                                    sort_keys=True).encode()).hexdigest()[:16]
    return model_dir.parent / ".backup" / f"train-{key}"


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    if minutes >= 60:
        return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}"
    return f"{minutes}:{seconds:02d}"


def _epoch_log(path: Path, epochs: int):
    """A callback keeping one row per epoch in ``path``, across a resumed run, and logging
    ``epoch 7/30`` with the headline figures, the time so far and an ETA (the rest of each row
    is in history.csv, and in the log with --verbose)."""
    import keras

    class EpochLog(keras.callbacks.Callback):
        def on_train_begin(self, logs: dict | None = None) -> None:
            self.rows = json.loads(path.read_text()) if path.exists() else []
            self.started = time.perf_counter()
            self.first: int | None = None

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.first = epoch if self.first is None else self.first

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            row = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}}
            row["learning_rate"] = float(self.model.optimizer.learning_rate.numpy())
            self.rows = [r for r in self.rows if r["epoch"] <= epoch] + [row]
            path.write_text(json.dumps(self.rows))
            elapsed = time.perf_counter() - self.started
            per_epoch = elapsed / (epoch + 1 - (self.first or 0))
            headline = ", ".join(f"{k} {row[k]:.4g}" for k in ("loss", "accuracy", "val_loss",
                                                               "val_accuracy") if k in row)
            # The ETA is for all `epochs`: early stopping can only make it sooner.
            logger.info("epoch %d/%d: %s (%s elapsed, ETA %s or less)", epoch + 1, epochs, headline,
                        _clock(elapsed), _clock(per_epoch * (epochs - epoch - 1)))
            logger.debug("epoch %d: %s", epoch + 1, ", ".join(
                f"{k} {v:.4g}" for k, v in row.items() if k != "epoch"))

    return EpochLog()


def _divergence_guard():
    """A callback that stops training at the first non-finite loss and remembers where."""
    import math

    import keras

    class DivergenceGuard(keras.callbacks.Callback):
        epoch, at = 0, None

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.epoch = epoch + 1

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            loss = float((logs or {}).get("loss", 0.0))
            if not math.isfinite(loss) and self.at is None:
                self.at = (self.epoch, batch + 1, loss)
                self.model.stop_training = True

    return DivergenceGuard()


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


def _write_history(rows: list[dict], path: Path) -> None:
    columns = ["epoch", *[m for m in EPOCH_METRICS if m in rows[0]],
               *[f"val_{m}" for m in EPOCH_METRICS if f"val_{m}" in rows[0]],
               *(["val_loss_smoothed"] if "val_loss_smoothed" in rows[0] else []), "learning_rate"]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: (r[k] if k == "epoch" else round(r[k], 6)) for k in columns} for r in rows)


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


def _callbacks(backup: Path, reports_dir: Path, params: TrainParams, phase: Phase,
               validation: list) -> list:
    """Resume, keep the best epoch, stop early, lower the rate, log; the divergence guard first.
    A frozen phase only warms the head: it neither stops early nor lowers the rate."""
    import keras

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
    return [
        _divergence_guard(),
        *validation,  # the val figures, when fit does not measure them itself
        _smoothed_val_loss(log_path, params.val_loss_smoothing),  # before those that read it
        keras.callbacks.BackupAndRestore(str(state)),
        # weights only: no model config; the optimizer's state is not wanted back (train
        # silences Keras' warning when another phase's optimizer does not match it)
        keras.callbacks.ModelCheckpoint(str(backup / "best.weights.h5"), monitor=monitor,
                                        mode="min", save_best_only=True, save_weights_only=True,
                                        initial_value_threshold=min(
                                            (r[monitor] for r in done), default=None)),
        *kept,
        _resumed_counters(backup / "counters.json", kept, _resume_epoch(state)),
        keras.callbacks.TensorBoard(str(reports_dir / "tensorboard"), write_graph=False),
        _epoch_log(log_path, params.epochs),
    ]


def monitored(params: TrainParams) -> str:
    """The figure early stopping, the plateau and the kept epoch follow."""
    return "val_loss_smoothed" if params.val_loss_smoothing else "val_loss"


def _smoothed_val_loss(log_path: Path, weight: float):
    """A callback adding ``val_loss_smoothed`` to each epoch's logs, for the callbacks after
    it: an exponential moving average of val_loss (``weight`` on the past), computed from
    the epochs so far, so a resumed run gets the same values."""
    import keras

    class SmoothedValLoss(keras.callbacks.Callback):
        def on_train_begin(self, logs: dict | None = None) -> None:
            rows = json.loads(log_path.read_text()) if log_path.exists() else []
            self.raw = {r["epoch"]: r["val_loss"] for r in rows}

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            if not weight or logs is None or "val_loss" not in logs:
                return
            self.raw = {e: v for e, v in self.raw.items() if e <= epoch} | {
                epoch + 1: float(logs["val_loss"])}
            smoothed = None
            for number in sorted(self.raw):
                value = self.raw[number]
                smoothed = value if smoothed is None else weight * smoothed + (1 - weight) * value
            logs["val_loss_smoothed"] = smoothed

    return SmoothedValLoss()


def _validation_by_prediction(val_data):
    """A callback adding the val figures to each epoch's logs from ``model.predict``, for a
    mirrored model: Keras' evaluate under MirroredStrategy fails on a last batch the replicas
    cannot share evenly (AddN of unequal shapes, Keras 3.15), and predict does not."""
    import keras
    import numpy as np

    from pipeline.model import metrics

    labels = np.concatenate([np.asarray(y).ravel() for _, y in val_data])

    class ValidationByPrediction(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            if logs is None:
                return
            scores = np.asarray(self.model.predict(val_data, verbose=0)).ravel()
            logs["val_loss"] = float(keras.losses.BinaryCrossentropy()(labels, scores))
            for metric in metrics():
                metric.update_state(labels, scores)
                logs[f"val_{metric.name}"] = float(metric.result())

    return ValidationByPrediction()


def _resume_epoch(state: Path) -> int:
    """The epoch BackupAndRestore will resume from, out of its ``state`` folder (0: none)."""
    try:
        return int(json.loads((state / "training_metadata.json").read_text())["epoch"])
    except (OSError, ValueError, KeyError):
        return 0


def _resumed_counters(path: Path, kept: list, resume_epoch: int):
    """What BackupAndRestore does not keep (it saves weights and optimizer state before the
    plateau schedule acts): early stopping's and the plateau's counters, the learning rate
    the plateau set, and the random layers' seed states (augmentation, dropout); saved after
    every epoch and put back when a run resumes from the same epoch."""
    import keras

    keys = ("wait", "best", "best_epoch", "stopped_epoch", "cooldown_counter")

    def seeds(model: keras.Model) -> list:
        weights = {id(w) for w in model.weights}
        return [v for v in model.variables if id(v) not in weights]

    class ResumedCounters(keras.callbacks.Callback):
        def on_train_begin(self, logs: dict | None = None) -> None:
            saved = json.loads(path.read_text()) if path.exists() else {}
            if saved.get("epoch") != resume_epoch:  # not the epoch the weights are from
                return
            for callback, state in zip(kept, saved.get("callbacks", []), strict=False):
                vars(callback).update(state)
            for variable, value in zip(seeds(self.model), saved["seeds"], strict=True):
                variable.assign(value)
            self.model.optimizer.learning_rate.assign(saved["learning_rate"])

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            path.write_text(json.dumps({
                "epoch": epoch + 1,
                "callbacks": [{k: float(v) if k == "best" and v is not None else v
                               for k, v in vars(c).items() if k in keys} for c in kept],
                "seeds": [variable.numpy().tolist() for variable in seeds(self.model)],
                "learning_rate": float(self.model.optimizer.learning_rate.numpy())}))

    return ResumedCounters()


def _figures(model, records: Path, meta: dict, val_data, batch_size: int) -> dict[str, dict]:
    """Figures of the best model in inference mode (no augmentation or dropout), so the
    train-val gap measures overfitting rather than the cost of regularisation; AUC exact."""
    import numpy as np
    import tensorflow as tf

    from pipeline import features
    from pipeline.curves import roc_auc

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


def _write_reports(report: TrainReport, rows: list[dict], reports_dir: Path) -> None:
    reports_dir.mkdir(parents=True, exist_ok=True)
    _write_history(rows, reports_dir / "history.csv")
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
               backup: Path, reports_dir: Path, strategy) -> tuple[int, float]:
    """Run one phase (resuming it if it was cut short); returns its epochs run and seconds."""
    from pipeline.model import compile_model, keeps_norm_statistics, set_trainable

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
    validation = [_validation_by_prediction(val_data)] if mirrored else []
    callbacks = _callbacks(backup, reports_dir, params, phase, validation)
    started = time.perf_counter()
    fitted = model.fit(train_data, validation_data=None if mirrored else val_data,
                       initial_epoch=phase.first, epochs=phase.last, steps_per_epoch=steps,
                       callbacks=callbacks,
                       class_weight=class_weights(meta["counts"]["train"], meta["class_names"],
                                                  params.class_weight),
                       shuffle=False, verbose=1 if sys.stdout.isatty() else 0)  # tf.data shuffles
    seconds = time.perf_counter() - started
    _refuse_divergence(callbacks[0], backup, params)
    if phase.from_layer is None:
        model.save_weights(done)
    return len(fitted.epoch), seconds


def train(records: Path, model_dir: Path, reports_dir: Path, params: TrainParams,
          seed: int) -> TrainReport:
    """Fit, keep the best epoch by val_loss, and write the model, history and metrics."""
    from pipeline import features
    from pipeline.model import build_model, compile_model, warm_start, without_augmentation

    meta = features.read_meta(records)
    device = configure_runtime(seed)
    strategy = _strategy(params)
    if strategy.num_replicas_in_sync > 1:
        device += f", mirrored over {strategy.num_replicas_in_sync} replicas"
    backup = _backup_dir(model_dir, records, params, seed)
    backup.mkdir(parents=True, exist_ok=True)
    with strategy.scope():
        model = build_model(params, meta["image_size"], seed)
        if params.init_from:
            taken = warm_start(model, Path(params.init_from))
            logger.info("train: %d layers start from %s", taken, params.init_from)
    logger.info("training %s parameters (%s) on %s: %s", f"{model.count_params():,}",
                params.backbone, device, meta["counts"]["train"])
    epochs_run, seconds = 0, 0.0
    for phase in phases(params):
        ran, took = _fit_phase(model, phase, records, meta, params, seed, backup, reports_dir,
                               strategy)
        epochs_run, seconds = epochs_run + ran, seconds + took
    rows = json.loads((backup / "epochs.json").read_text())
    best = min(rows, key=lambda r: (r[monitored(params)], r["epoch"]))
    with warnings.catch_warnings():  # the file holds the optimizer of the phase that saved it,
        # which a later phase's need not match, and which is not wanted back: weights only
        warnings.filterwarnings("ignore", "Skipping variable loading for optimizer")
        model.load_weights(backup / "best.weights.h5")  # the best epoch, also when run to the end
    inference = without_augmentation(model, params, meta["image_size"])
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
    report = TrainReport(best_epoch=best["epoch"], epochs_run=len(rows), train=figures["train"],
                         val=figures["val"], gap=gap,
                         images_per_second=train_count * epochs_run / max(seconds, 1e-9),
                         device=device)
    _write_reports(report, rows, reports_dir)
    shutil.rmtree(backup, ignore_errors=True)  # finished: nothing left to resume
    return report


def _save(model, meta: dict, model_dir: Path) -> None:
    """The model, and the input contract that predict and the model card read beside it."""
    model_dir.mkdir(parents=True, exist_ok=True)
    model.save(model_dir / "model.keras")
    contract = {k: meta[k] for k in ("image_size", "channels", "class_names", "resize", "pixels")}
    contract["crop"] = meta.get("crop", {"kind": "none"})  # records written before crops: none
    write_atomic(model_dir / "input.json", json.dumps(contract, indent=2, sort_keys=True) + "\n")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--records", type=Path, default=Path("data/tfrecords"))
    parser.add_argument("--models", type=Path, default=Path("models/train"))
    parser.add_argument("--reports", type=Path, default=Path("reports/train"))


def run(args: argparse.Namespace) -> None:
    load_tensorflow()  # its native start-up notices go to the debug log
    params = load_params(args.params)
    report = train(args.records, args.models, args.reports, params.train, params.seed)
    logger.info("train: best epoch %d of %d on %s (%.1f images/s); val accuracy %.3f, "
                "train-val accuracy gap %.3f; model in %s", report.best_epoch, report.epochs_run,
                report.device, report.images_per_second, report.val["accuracy"],
                report.gap["accuracy"], args.models / "model.keras")
