"""The Keras internals a resumed run relies on: where EarlyStopping and ReduceLROnPlateau keep
their progress. A Keras release that renames them fails here, not silently in a resumed run."""

from __future__ import annotations

import numpy as np


def _model():
    import keras

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    return model


def test_keras_keeps_the_counters_where_counter_state_reads_them() -> None:
    import keras

    from pipeline.ml.callbacks import COUNTERS

    for callback in (keras.callbacks.EarlyStopping(monitor="val_loss", patience=3),
                     keras.callbacks.ReduceLROnPlateau(monitor="val_loss", patience=2)):
        callback.set_model(_model())
        callback.on_train_begin()
        missing = [n for n in COUNTERS[type(callback).__name__] if n not in vars(callback)]
        assert not missing, f"Keras' {type(callback).__name__} no longer has {missing}"


def test_restored_counters_carry_early_stopping_on_where_it_left_off() -> None:
    """Two epochs without progress, saved and put back into a fresh callback: a third stops
    training at patience 3, as one uninterrupted run would."""
    import keras

    from pipeline.ml.callbacks import counter_state, restore_counters

    def stopping() -> keras.callbacks.EarlyStopping:
        callback = keras.callbacks.EarlyStopping(monitor="val_loss", patience=3)
        callback.set_model(_model())
        callback.on_train_begin()
        return callback

    first = stopping()
    for epoch, loss in enumerate([1.0, 1.1, 1.2]):
        first.on_epoch_end(epoch, {"val_loss": loss})
    state = counter_state(first)
    assert state["wait"] == 2 and state["best"] == 1.0 and not first.model.stop_training

    resumed = stopping()  # its on_train_begin reset everything
    restore_counters(resumed, state)
    resumed.on_epoch_end(3, {"val_loss": 1.3})
    assert resumed.model.stop_training and resumed.stopped_epoch == 3

    fresh = stopping()  # without the counters the same epoch would not stop it
    fresh.on_epoch_end(3, {"val_loss": 1.3})
    assert not fresh.model.stop_training
    assert np.isfinite(state["best"])
