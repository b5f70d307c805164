"""The happysad CNN: raw uint8 pixels in, the probability of the second class out.

Scaling to [0, 1] and augmentation are layers of the model, so training,
evaluation, ``predict`` and the serving export all see the same preprocessing
(augmentation is active only while training). The architectures: the seed CNN or a Keras
application for the whole picture, the two-view model (the whole picture and the face), the
face scan, and the ensemble of ``train.members``; and the saved form of a trained network.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import keras
from keras import layers, regularizers

from pipeline.ml.applications import application
from pipeline.ml.layers import FusedBatchNormalization, ViewDropout, augmentation

if TYPE_CHECKING:  # annotations only: no runtime dependency on the schema
    from pipeline.config.train import TrainParams

FACE_NETWORK = "face_network"  # a two-view model's face view: the pretrained face network

SCAN_PREFIX = "scan_"  # its copy's layers, scanning the whole picture (train.face_scan)

MEMBER_PREFIX = "member_"  # the networks of an ensemble (train.members), member_0 first


def build_model(params: TrainParams, image_size: int, seed: int, augment: bool = True,
                pretrained: bool = True, face: keras.Model | None = None) -> keras.Model:
    """The network of params.yaml's ``train`` section for ``image_size`` square RGB inputs.

    ``augment=False`` builds the same network without the augmentation block, and with
    Keras' own BatchNormalization layers where training uses FusedBatchNormalization (the
    same weights): the model that is saved. Keras' random layers default to ``training=True`` when a
    model is called as ``model(x)``, so a saved model that kept them would augment
    the images of anyone who calls it that way. ``pretrained=False`` leaves a Keras
    application's weights random (for a model whose weights are copied in next).

    ``face`` (:func:`face_branch`) makes the two-view model: the ``pixels`` input is the whole
    picture, seen by the network above; ``face`` (uint8, the face network's side) is the aligned
    face, seen by the face network; ``face_found`` (float 0 or 1) says whether there was one.
    Their pooled features meet in one sigmoid, the face's multiplied by ``face_found``: an
    image with no face is judged on the whole picture alone, and the head learns how far to
    trust each view.
    """
    l2 = regularizers.L2(params.l2) if params.l2 else None
    inputs = keras.Input((image_size, image_size, 3), dtype="uint8", name="pixels")
    if params.backbone == "seed_cnn":
        x = layers.Rescaling(1.0 / 255, name="to_unit_range")(inputs)
    else:
        x = layers.Rescaling(1.0, name="to_float")(inputs)  # the application scales its input
    steps = augmentation(params.augment, seed) if augment else None
    if steps is not None:
        x = steps(x)
    whole = x  # the (augmented) whole picture, for a face scan
    if params.backbone == "seed_cnn":
        x = _seed_body(x, params, l2, FusedBatchNormalization if augment else
                       layers.BatchNormalization)
    else:
        x = application(params, image_size, pretrained)(x)  # BatchNorm: see set_trainable
    x = (layers.GlobalAveragePooling2D(name="pool") if params.head == "global_average"
         else layers.Flatten(name="flatten"))(x)
    all_inputs = [inputs]
    if face is not None:
        x, face_inputs = _with_face(x, face, params, seed, augment, whole)
        all_inputs += face_inputs
    if params.dense_units:
        x = layers.Dropout(params.dropout, seed=seed + 3, name="hidden_dropout")(x)
        x = layers.Dense(params.dense_units, activation="relu", kernel_regularizer=l2, name="hidden")(x)
    x = layers.Dropout(params.dropout, seed=seed + 4, name="dropout")(x)
    # float32 output keeps the probabilities exact under mixed precision on a GPU.
    outputs = layers.Dense(1, activation="sigmoid", kernel_regularizer=l2, dtype="float32",
                           name="probability")(x)
    name = "happysad_cnn" if params.backbone == "seed_cnn" else f"happysad_{params.backbone}"
    if face is not None:
        return keras.Model(all_inputs, outputs, name=f"{name}_two_views")
    return keras.Model(inputs, outputs, name=name)

def _with_face(x: keras.KerasTensor, face: keras.Model, params: TrainParams, seed: int,
               augment: bool, whole: keras.KerasTensor
               ) -> tuple[keras.KerasTensor, list[keras.KerasTensor]]:
    """The whole picture's pooled features ``x`` joined by the face view's, gated by the
    face-found flag, and by the face scan's of the ``whole`` picture (``train.face_scan``);
    and the two inputs this adds."""
    side = face.inputs[0].shape[1]
    face_in = keras.Input((side, side, 3), dtype="uint8", name="face")
    found = keras.Input((1,), dtype="float32", name="face_found")
    y = layers.Rescaling(1.0, name="face_to_float")(face_in)  # the face network scales it
    steps = augmentation(params.augment, seed + 5) if augment else None
    if steps is not None:
        steps.name = "face_augment"
        y = steps(y)
    flag = ViewDropout(params.view_dropout, seed + 6, name="view_dropout")(found) \
        if augment and params.view_dropout else found
    y = layers.Multiply(name="face_gate")([face(y), flag])
    joined = layers.Concatenate(name="views")([x, y, flag])
    if params.face_scan:
        joined = layers.Concatenate(name="views_and_scan")([joined, _face_scan(whole, face, params)])
    return joined, [face_in, found]

def _face_scan(whole: keras.KerasTensor, face: keras.Model, params: TrainParams) -> keras.KerasTensor:
    """A copy of the face network (its layers named ``scan_...``, their weights starting from
    its) over the whole picture scaled by each ``face_scan`` factor, pooled and joined: it sees
    faces the detector missed, at a scale it knows them. Its layers are the outer model's own,
    not a nested model: one set of weights called at every size."""
    copies = []
    for layer in face.layers[1:]:
        config = {**layer.get_config(), "name": f"{SCAN_PREFIX}{layer.name}"}
        copies.append((layer.__class__.from_config(config), layer))
    if params.backbone == "seed_cnn":  # the whole picture is in [0, 1]; the face network scales
        whole = layers.Rescaling(255.0, name="scan_to_float")(whole)
    pooled = []
    for factor in params.face_scan:
        # Keras' Resizing layer is not used: its call defaults to training=True, which a model
        # called without `training` passes on to the BatchNorm layers after it
        x, name = whole, f"{factor:g}".replace(".", "_")
        if factor < 1:
            x = layers.AveragePooling2D(round(1 / factor), name=f"scan_at_{name}")(x)
        elif factor > 1:
            x = layers.UpSampling2D(round(factor), interpolation="bilinear",
                                    name=f"scan_at_{name}")(x)
        for copy, _ in copies:
            x = copy(x)
        pooled.append(x)
    for copy, layer in copies:
        copy.set_weights(layer.get_weights())
    return pooled[0] if len(pooled) == 1 else layers.Concatenate(name="scan")(pooled)

def _seed_body(x: keras.KerasTensor, params: TrainParams, l2: regularizers.Regularizer | None,
               norm: type[layers.BatchNormalization]) -> keras.KerasTensor:
    """The seed's blocks: Conv2D + BatchNorm + ReLU (``convs_per_block`` times), then MaxPool."""
    for number, filters in enumerate(params.filters, start=1):
        for conv in range(1, params.convs_per_block + 1):
            name = f"block{number}" + (f"_{conv}" if params.convs_per_block > 1 else "")
            stride = params.first_stride if number == conv == 1 else 1
            x = layers.Conv2D(filters, params.kernel_size, strides=stride, padding="same",
                              use_bias=False, kernel_regularizer=l2, name=f"{name}_conv")(x)
            x = norm(momentum=params.batchnorm_momentum, name=f"{name}_bn")(x)
            x = layers.ReLU(name=f"{name}_relu")(x)
        x = layers.MaxPooling2D(name=f"block{number}_pool")(x)
    return x

def ensemble(members: list[keras.Model]) -> keras.Model:
    """One model that averages the probabilities of ``members`` (the same inputs, each trained
    from its own seed); one member is returned as it is. The inputs keep their names, so
    predict, evaluate, serving and the LiteRT export feed it as they feed one network."""
    if len(members) == 1:
        return members[0]
    first = members[0]
    inputs = [keras.Input(t.shape[1:], dtype=t.dtype, name=t.name) for t in first.inputs]
    fed = inputs[0] if len(inputs) == 1 else inputs
    outputs = [keras.Model(m.inputs, m.output, name=f"{MEMBER_PREFIX}{number}")(fed)
               for number, m in enumerate(members)]
    return keras.Model(fed, layers.Average(dtype="float32", name="probability")(outputs),
                       name=f"{first.name}_x{len(members)}")

def first_member(model: keras.Model) -> keras.Model:
    """An ensemble's first network (the one a warm start or a face view copies); else the model."""
    try:
        return model.get_layer(f"{MEMBER_PREFIX}0")
    except ValueError:
        return model

@contextlib.contextmanager
def _float32() -> Iterator[None]:
    """Layers built inside compute in float32; Keras' global policy is put back afterwards, so
    the next member of a mixed-precision run trains under the run's own policy."""
    before = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(before)


def without_augmentation(model: keras.Model, params: TrainParams, image_size: int) -> keras.Model:
    """The trained weights in a float32 model with no augmentation block, for saving."""
    with _float32():  # a GPU run computed in float16
        face = None
        with contextlib.suppress(ValueError):  # a two-view model: its face network's architecture
            face = keras.models.clone_model(model.get_layer(FACE_NETWORK))
        inference = build_model(params, image_size, seed=0, augment=False, pretrained=False,
                                face=face)
    for layer in inference.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return inference
