"""A model file and a network to train: ``load`` a saved model safely (no code from the file
runs), ``compile_model`` with Adam, binary cross-entropy and the metrics of ``metrics``."""

from __future__ import annotations

import zipfile
from pathlib import Path

import keras

from pipeline.runtime.errors import UserError


def load(path: Path) -> keras.Model:
    """A saved model, loaded with ``safe_mode=True`` (no code from the file runs), or a
    one-line ``UserError`` naming the file and what to do: missing, truncated, not a Keras
    archive, a broken config, or a layer that safe mode refuses."""
    if not path.is_file():
        raise UserError(f"{path}: not found; run the train stage (dvc repro train), or pass the "
                        "folder of a saved model")
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path}: not a Keras model file (not a .keras zip archive; truncated "
                        "or another format); save or train it again")
    try:
        return keras.models.load_model(path, safe_mode=True, compile=False)
    except Exception as err:  # noqa: BLE001 - Keras raises many types for a bad archive
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "safe_mode" in str(err) or "Lambda" in str(err):
            raise UserError(f"{path}: holds code (a Lambda layer or custom object) that safe "
                            "mode will not run; use a model this pipeline saved") from None
        raise UserError(f"{path}: cannot be loaded as a Keras model ({type(err).__name__}: "
                        f"{text[:200]}); save or train it again") from None

def metrics() -> list[keras.metrics.Metric]:
    return [keras.metrics.BinaryAccuracy(name="accuracy"), keras.metrics.Precision(name="precision"),
            keras.metrics.Recall(name="recall"),
            # Keras' AUC sums over 200 fixed thresholds: an estimate, named as one. The train
            # report's "auc" and evaluate's "roc_auc" are exact (pipeline.ml.curves.roc_auc).
            keras.metrics.AUC(name="auc_approx")]

def compile_model(model: keras.Model, learning_rate: float,
                  label_smoothing: float = 0.0) -> keras.Model:
    """Adam and binary cross-entropy (``label_smoothing`` on the targets it trains on)."""
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing),
                  metrics=metrics())
    return model
