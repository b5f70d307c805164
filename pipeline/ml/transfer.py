"""Starting from another network: a saved face network as the two-view model's face view
(``face_branch``), a saved model's weights copied in by layer name (``warm_start``), and which
layers train in each phase (``set_trainable``)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

import keras
from keras import layers

from pipeline.ml.applications import BODY
from pipeline.ml.model import load
from pipeline.ml.network import FACE_NETWORK, SCAN_PREFIX, first_member
from pipeline.runtime.errors import UserError

if TYPE_CHECKING:  # annotations only: no runtime dependency on the schema
    from pipeline.config.train import TrainParams


def face_branch(face_model: keras.Model, path: Path | str = "") -> keras.Model:
    """A saved face network (the pretrain stage's) as a two-view model's face view: its own
    layers, from after its uint8 input to its global pooling, as one nested model that takes
    float pixels 0-255 (so augmentation can come first). ``path`` names it in errors."""
    face_model = first_member(face_model)
    names = [layer.name for layer in face_model.layers]
    if "pool" not in names or len(face_model.inputs) != 1:
        raise UserError(f"train.init_from: {path or face_model.name} is no face network of this "
                        "pipeline (one image input, a global-average pool); use the pretrain "
                        "stage's models/pretrain/model.keras")
    side = face_model.inputs[0].shape[1]
    inputs = keras.Input((side, side, 3), dtype="float32", name="face_pixels")
    x = inputs
    for layer in face_model.layers[1:names.index("pool") + 1]:
        x = layer(x)
    return keras.Model(inputs, x, name=FACE_NETWORK)

def body_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The layers the frozen phase freezes, in order: the application's own layers (a
    pretrained whole view), then a two-view model's face network and its scan; or the seed
    CNN's blocks (every layer between the augmentation and the pooling head). A two-view
    model's seed-CNN whole view is not among them: it learns from scratch, so never freezes."""
    application: list[keras.layers.Layer] = []
    with contextlib.suppress(ValueError):
        application = list(model.get_layer(BODY).layers)
    with contextlib.suppress(ValueError):
        return [*application, *model.get_layer(FACE_NETWORK).layers,
                *(layer for layer in model.layers if layer.name.startswith(SCAN_PREFIX)
                  and layer.weights)]
    return application or [layer for layer in model.layers if layer.name.startswith("block")]

def keeps_norm_statistics(params: TrainParams) -> bool:
    """Whether a Keras application's BatchNorm layers stay frozen (inference mode) throughout:
    when it starts from trained weights, whose statistics a few hundred images would overwrite
    (Keras' transfer-learning guide). From random weights they must learn theirs. (Calling the
    application with ``training=False`` does not do it: Keras 3.15 lets the outer call's
    ``training`` override it.)"""
    return params.backbone != "seed_cnn" and (params.weights != "none" or bool(params.init_from))

def set_trainable(model: keras.Model, from_layer: str | None, frozen_norms: bool = False) -> None:
    """Freeze the body (``from_layer`` None), or let it train from ``from_layer`` on ("" =
    all of it), its BatchNorm layers frozen too if ``frozen_norms``; the head always trains.
    Compile again afterwards."""
    body = body_layers(model)
    names = [layer.name for layer in body]
    if from_layer and from_layer not in names:
        hint = ", ".join(n for n in names if n.endswith(("conv", "expand_conv")))[:300]
        raise UserError(f"train.fine_tune.from_layer: {from_layer!r} is no layer of the "
                        f"{model.name} body; layers include {hint}")
    start = len(names) if from_layer is None else names.index(from_layer) if from_layer else 0
    for nested in (BODY, FACE_NETWORK):
        with contextlib.suppress(ValueError):  # a nested model's own flag gates its layers'
            model.get_layer(nested).trainable = True
    for index, layer in enumerate(body):
        norm = isinstance(layer, layers.BatchNormalization)
        layer.trainable = index >= start and not (frozen_norms and norm)

def warm_start(model: keras.Model, path: Path) -> int:
    """Copy into ``model`` the weights of every layer of the saved model at ``path`` with the
    same name and weight shapes; returns how many layers took them (a ``UserError`` if no
    layer of the body did: a head alone is no warm start)."""
    earlier = first_member(load(path))
    body = {layer.name for layer in body_layers(model)} | {BODY}
    taken = []
    for layer in model.layers:
        try:
            source = earlier.get_layer(layer.name)
        except ValueError:
            continue
        weights = source.get_weights()
        if weights and [w.shape for w in weights] == [w.shape for w in layer.get_weights()]:
            layer.set_weights(weights)
            taken.append(layer.name)
    if not body & set(taken):
        raise UserError(f"train.init_from: {path} shares no layer of the body (by name and "
                        f"shape) with the {model.name} of params.yaml; start from a model with "
                        "the same backbone")
    return len(taken)
