"""The happysad CNN: raw uint8 pixels in, the probability of the second class out.

Scaling to [0, 1] and augmentation are layers of the model, so training,
evaluation, ``predict`` and the serving export all see the same preprocessing
(augmentation is active only while training).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import keras
from keras import layers, regularizers

from pipeline.errors import UserError
from pipeline.params import AugmentParams, TrainParams


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


def augmentation(params: AugmentParams, seed: int) -> keras.Sequential | None:
    """Random flips, rotations and zooms, active only while training; None if all are off."""
    steps: list[layers.Layer] = []
    if params.flip:
        steps.append(layers.RandomFlip("horizontal", seed=seed))
    if params.rotation:
        steps.append(layers.RandomRotation(params.rotation, fill_mode="reflect", seed=seed + 1))
    if params.zoom:
        steps.append(layers.RandomZoom(params.zoom, fill_mode="reflect", seed=seed + 2))
    return keras.Sequential(steps, name="augment") if steps else None


def build_model(params: TrainParams, image_size: int, seed: int, augment: bool = True) -> keras.Model:
    """The CNN of params.yaml's ``train`` section for ``image_size`` square RGB inputs.

    ``augment=False`` builds the same network without the augmentation block: the
    model that is saved. Keras' random layers default to ``training=True`` when a
    model is called as ``model(x)``, so a saved model that kept them would augment
    the images of anyone who calls it that way.
    """
    l2 = regularizers.L2(params.l2) if params.l2 else None
    inputs = keras.Input((image_size, image_size, 3), dtype="uint8", name="pixels")
    x = layers.Rescaling(1.0 / 255, name="to_unit_range")(inputs)
    steps = augmentation(params.augment, seed) if augment else None
    if steps is not None:
        x = steps(x)
    for number, filters in enumerate(params.filters, start=1):
        for conv in range(1, params.convs_per_block + 1):
            name = f"block{number}" + (f"_{conv}" if params.convs_per_block > 1 else "")
            stride = params.first_stride if number == conv == 1 else 1
            x = layers.Conv2D(filters, params.kernel_size, strides=stride, padding="same",
                              use_bias=False, kernel_regularizer=l2, name=f"{name}_conv")(x)
            x = layers.BatchNormalization(momentum=params.batchnorm_momentum, name=f"{name}_bn")(x)
            x = layers.ReLU(name=f"{name}_relu")(x)
        x = layers.MaxPooling2D(name=f"block{number}_pool")(x)
    x = (layers.GlobalAveragePooling2D(name="pool") if params.head == "global_average"
         else layers.Flatten(name="flatten"))(x)
    if params.dense_units:
        x = layers.Dropout(params.dropout, seed=seed + 3, name="hidden_dropout")(x)
        x = layers.Dense(params.dense_units, activation="relu", kernel_regularizer=l2, name="hidden")(x)
    x = layers.Dropout(params.dropout, seed=seed + 4, name="dropout")(x)
    # float32 output keeps the probabilities exact under mixed precision on a GPU.
    outputs = layers.Dense(1, activation="sigmoid", kernel_regularizer=l2, dtype="float32",
                           name="probability")(x)
    return keras.Model(inputs, outputs, name="happysad_cnn")


def without_augmentation(model: keras.Model, params: TrainParams, image_size: int) -> keras.Model:
    """The trained weights in a float32 model with no augmentation block, for saving."""
    keras.mixed_precision.set_global_policy("float32")  # a GPU run computed in float16
    inference = build_model(params, image_size, seed=0, augment=False)
    for layer in inference.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return inference


def metrics() -> list[keras.metrics.Metric]:
    return [keras.metrics.BinaryAccuracy(name="accuracy"), keras.metrics.Precision(name="precision"),
            keras.metrics.Recall(name="recall"),
            # Keras' AUC sums over 200 fixed thresholds: an estimate, named as one. The train
            # report's "auc" and evaluate's "roc_auc" are exact (pipeline.curves.roc_auc).
            keras.metrics.AUC(name="auc_approx")]


def compile_model(model: keras.Model, learning_rate: float) -> keras.Model:
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.BinaryCrossentropy(), metrics=metrics())
    return model
