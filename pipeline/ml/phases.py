"""A member's phases (frozen, then fine-tuning), each one ``fit`` with its callbacks in the
order Keras must run them, resumed where a crash cut it short."""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.config.train import TrainParams
from pipeline.ml.context import FitContext
from pipeline.ml.inputs import class_weights, training_inputs
from pipeline.runtime.errors import UserError

if TYPE_CHECKING:  # annotations only: keras is imported once TensorFlow is set up
    from pipeline.ml.callbacks import DivergenceGuard


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


def monitored(params: TrainParams) -> str:
    """The figure early stopping, the plateau and the kept epoch follow."""
    return "val_loss_smoothed" if params.val_loss_smoothing else "val_loss"


def resume_epoch(state: Path) -> int:
    """The epoch BackupAndRestore will resume from, out of its ``state`` folder (0: none)."""
    try:
        return int(json.loads((state / "training_metadata.json").read_text())["epoch"])
    except (OSError, ValueError, KeyError):
        return 0


@dataclass(frozen=True)
class Callbacks:
    """A phase's callbacks in the order Keras runs them, and the guard ``train`` asks afterwards."""

    guard: DivergenceGuard
    ordered: list


def phase_callbacks(backup: Path, tensorboard: Path, params: TrainParams, phase: Phase,
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
        callbacks.ResumedCounters(backup / "counters.json", kept, resume_epoch(state)),
        keras.callbacks.TensorBoard(str(tensorboard), write_graph=False),
        callbacks.EpochLog(log_path, params.epochs),
    ])


def refuse_divergence(guard, backup: Path, params: TrainParams) -> None:
    """A diverged run ships nothing: no model is written, and its resume state is dropped so
    the next run starts afresh instead of from NaN weights."""
    if guard.at is None:
        return
    shutil.rmtree(backup, ignore_errors=True)
    epoch, batch, loss = guard.at
    raise UserError(f"training diverged: the loss became {loss} at epoch {epoch}, batch {batch}; "
                    f"nothing was saved. Lower train.learning_rate ({params.learning_rate}) in "
                    "params.yaml, or check the records")


def fit_phase(run: FitContext, model, phase: Phase, seed: int, backup: Path,
              tensorboard: Path) -> tuple[int, float]:
    """Run one phase of the member of ``seed`` (resuming it if it was cut short); returns its
    epochs run and seconds."""
    from pipeline.ml.model import compile_model
    from pipeline.ml.transfer import keeps_norm_statistics, set_trainable

    params, strategy = run.params, run.strategy
    done = backup / f"phase-{phase.number}.weights.h5"
    if phase.from_layer is None and done.exists():  # a finished frozen phase of a resumed run
        model.load_weights(done)
        return 0, 0.0
    set_trainable(model, phase.from_layer, keeps_norm_statistics(params))
    with strategy.scope():  # type: ignore[attr-defined]
        compile_model(model, phase.learning_rate, params.label_smoothing)
        model.optimizer.build(model.trainable_variables)  # so a resumed run gets its state back
    first = max(phase.first, resume_epoch(backup / phase.state))
    train_data, steps, val_data = training_inputs(run.records, run.meta, params, seed, first,
                                                  phase.last, run.global_batch)
    mirrored = strategy.num_replicas_in_sync > 1  # type: ignore[attr-defined]
    validation = []
    if mirrored:
        from pipeline.ml.callbacks import ValidationByPrediction

        validation = [ValidationByPrediction(val_data)]
    callbacks = phase_callbacks(backup, tensorboard, params, phase, validation)
    started = time.perf_counter()
    fitted = model.fit(train_data, validation_data=None if mirrored else val_data,
                       initial_epoch=phase.first, epochs=phase.last, steps_per_epoch=steps,
                       callbacks=callbacks.ordered,
                       class_weight=class_weights(run.meta["counts"]["train"],
                                                  run.meta["class_names"], params.class_weight),
                       shuffle=False, verbose=1 if sys.stdout.isatty() else 0)  # tf.data shuffles
    seconds = time.perf_counter() - started
    refuse_divergence(callbacks.guard, backup, params)
    if phase.from_layer is None:
        model.save_weights(done)
    return len(fitted.epoch), seconds
