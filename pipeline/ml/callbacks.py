"""The Keras callbacks training runs with, each a top-level class.

``phases`` builds them in one order (``ml.phases.phase_callbacks``): what adds to an epoch's logs comes
before what reads them. Keras' own callbacks keep their progress in attributes that
``BackupAndRestore`` does not save; the names are Keras' internals, read and written only by
``counter_state`` and ``restore_counters`` here, and pinned by a test that fails when a Keras
release renames them.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import keras
import numpy as np

from pipeline.runtime.log import clock

logger = logging.getLogger(__name__)

# Keras' internal progress counters, by callback class: what a resumed run must put back.
COUNTERS = {
    "EarlyStopping": ("wait", "best", "best_epoch", "stopped_epoch"),
    "ReduceLROnPlateau": ("wait", "best", "cooldown_counter"),
}


def counter_state(callback: keras.callbacks.Callback) -> dict:
    """The progress of an EarlyStopping or ReduceLROnPlateau, as JSON-ready values."""
    state = {name: getattr(callback, name) for name in COUNTERS[type(callback).__name__]}
    if state.get("best") is not None:
        state["best"] = float(state["best"])
    return state


def restore_counters(callback: keras.callbacks.Callback, state: dict) -> None:
    """Put back what ``counter_state`` saved (after Keras' ``on_train_begin`` reset it)."""
    for name in COUNTERS[type(callback).__name__]:
        if name in state:
            setattr(callback, name, state[name])


class EpochLog(keras.callbacks.Callback):
    """One row per epoch in ``path``, kept across a resumed run, and a log line ``epoch 7/30``
    with the headline figures, the time so far and an ETA (the rest of each row is in
    history.csv, and in the log with --verbose)."""

    def __init__(self, path: Path, epochs: int) -> None:
        super().__init__()
        self.path, self.epochs = path, epochs

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.rows = json.loads(self.path.read_text()) if self.path.exists() else []
        self.started = time.perf_counter()
        self.first: int | None = None

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.first = epoch if self.first is None else self.first

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}}
        row["learning_rate"] = float(self.model.optimizer.learning_rate.numpy())
        self.rows = [r for r in self.rows if r["epoch"] <= epoch] + [row]
        self.path.write_text(json.dumps(self.rows))
        elapsed = time.perf_counter() - self.started
        per_epoch = elapsed / (epoch + 1 - (self.first or 0))
        headline = ", ".join(f"{k} {row[k]:.4g}" for k in ("loss", "accuracy", "val_loss",
                                                           "val_accuracy") if k in row)
        # The ETA is for all `epochs`: early stopping can only make it sooner.
        logger.info("epoch %d/%d: %s (%s elapsed, ETA %s or less)", epoch + 1, self.epochs,
                    headline, clock(elapsed), clock(per_epoch * (self.epochs - epoch - 1)))
        logger.debug("epoch %d: %s", epoch + 1, ", ".join(
            f"{k} {v:.4g}" for k, v in row.items() if k != "epoch"))


class DivergenceGuard(keras.callbacks.Callback):
    """Stops training at the first non-finite loss; ``at`` says where (epoch, batch, loss)."""

    def __init__(self) -> None:
        super().__init__()
        self.epoch, self.at = 0, None

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch = epoch + 1

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        loss = float((logs or {}).get("loss", 0.0))
        if not math.isfinite(loss) and self.at is None:
            self.at = (self.epoch, batch + 1, loss)
            self.model.stop_training = True


class SmoothedValLoss(keras.callbacks.Callback):
    """Adds ``val_loss_smoothed`` to each epoch's logs, for the callbacks after it: an
    exponential moving average of val_loss (``weight`` on the past), computed from the epochs
    so far (read back from ``log_path``), so a resumed run gets the same values."""

    def __init__(self, log_path: Path, weight: float) -> None:
        super().__init__()
        self.log_path, self.weight = log_path, weight

    def on_train_begin(self, logs: dict | None = None) -> None:
        rows = json.loads(self.log_path.read_text()) if self.log_path.exists() else []
        self.raw = {r["epoch"]: r["val_loss"] for r in rows}

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if not self.weight or logs is None or "val_loss" not in logs:
            return
        self.raw = {e: v for e, v in self.raw.items() if e <= epoch} | {
            epoch + 1: float(logs["val_loss"])}
        smoothed = None
        for number in sorted(self.raw):
            value = self.raw[number]
            smoothed = value if smoothed is None else (
                self.weight * smoothed + (1 - self.weight) * value)
        logs["val_loss_smoothed"] = smoothed


class ValidationByPrediction(keras.callbacks.Callback):
    """Adds the val figures to each epoch's logs from ``model.predict``, for a mirrored model:
    Keras' evaluate under MirroredStrategy fails on a last batch the replicas cannot share
    evenly (AddN of unequal shapes, Keras 3.15), and predict does not."""

    def __init__(self, val_data) -> None:  # a tf.data.Dataset of (images, labels)
        super().__init__()
        self.val_data = val_data
        self.labels = np.concatenate([np.asarray(y).ravel() for _, y in val_data])

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        from pipeline.ml.model import metrics

        if logs is None:
            return
        scores = np.asarray(self.model.predict(self.val_data, verbose=0)).ravel()
        logs["val_loss"] = float(keras.losses.BinaryCrossentropy()(self.labels, scores))
        for metric in metrics():
            metric.update_state(self.labels, scores)
            logs[f"val_{metric.name}"] = float(metric.result())


def _seed_variables(model: keras.Model) -> list:
    """The random layers' seed states (augmentation, dropout): the variables that are not
    weights."""
    weights = {id(w) for w in model.weights}
    return [v for v in model.variables if id(v) not in weights]


class ResumedCounters(keras.callbacks.Callback):
    """What BackupAndRestore does not keep (it saves weights and optimizer state before the
    plateau schedule acts): the ``kept`` callbacks' counters, the learning rate the plateau
    set, and the random layers' seed states; saved in ``path`` after every epoch and put back
    when a run resumes from the same epoch (``resume_epoch``)."""

    def __init__(self, path: Path, kept: list, resume_epoch: int) -> None:
        super().__init__()
        self.path, self.kept, self.resume_epoch = path, kept, resume_epoch

    def on_train_begin(self, logs: dict | None = None) -> None:
        saved = json.loads(self.path.read_text()) if self.path.exists() else {}
        if saved.get("epoch") != self.resume_epoch:  # not the epoch the weights are from
            return
        for callback, state in zip(self.kept, saved.get("callbacks", []), strict=False):
            restore_counters(callback, state)
        for variable, value in zip(_seed_variables(self.model), saved["seeds"], strict=True):
            variable.assign(value)
        self.model.optimizer.learning_rate.assign(saved["learning_rate"])

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.path.write_text(json.dumps({
            "epoch": epoch + 1,
            "callbacks": [counter_state(c) for c in self.kept],
            "seeds": [variable.numpy().tolist() for variable in _seed_variables(self.model)],
            "learning_rate": float(self.model.optimizer.learning_rate.numpy())}))
