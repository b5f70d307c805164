"""The happysad CNN: raw uint8 pixels in, the probability of the second class out.

Scaling to [0, 1] and augmentation are layers of the model, so training,
evaluation, ``predict`` and the serving export all see the same preprocessing
(augmentation is active only while training).
"""

from __future__ import annotations

import contextlib
import math
import os
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import keras
from keras import layers, ops, regularizers

from pipeline.runtime.errors import UserError

if TYPE_CHECKING:  # annotations only: no runtime dependency on the schema
    from pipeline.config.train import AugmentParams, TrainParams


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


class RandomAffine(layers.Layer):
    """Random flips, rotations and zooms as one bilinear resample of each image (reflecting at
    the edges), active only while training.

    The same draws as Keras' RandomFlip, RandomRotation and RandomZoom (a mirror with
    probability 1/2, an angle up to ``rotation`` of a full turn both ways, a scale up to
    ``zoom`` either way, about the centre), composed into one affine map: Keras' three layers
    resample each image three times (flip included), and were 37% of a training step at
    256 px on 2 cores (bench/speed.py); one resample is a third of their cost and blurs less.
    """

    def __init__(self, flip: bool = True, rotation: float = 0.0, zoom: float = 0.0,
                 seed: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.flip, self.rotation, self.zoom, self.seed = flip, rotation, zoom, seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training: bool = True):
        if not training:
            return images
        count = ops.shape(images)[0]
        height, width = images.shape[1], images.shape[2]
        turn = 2 * math.pi * self.rotation
        angle = keras.random.uniform((count,), -turn, turn, seed=self.seed_generator)
        scale = keras.random.uniform((count,), 1 - self.zoom, 1 + self.zoom,
                                     seed=self.seed_generator)
        mirror = keras.random.uniform((count,), seed=self.seed_generator) < 0.5
        sign = ops.where(mirror, -1.0, 1.0) if self.flip else ops.ones((count,))
        # output pixel p (about the centre c) reads the input at c + scale * R(angle) * F * (p - c)
        cos, sin = ops.cos(angle) * scale, ops.sin(angle) * scale
        a0, a1, b0, b1 = cos * sign, -sin, sin * sign, cos
        cx, cy = (width - 1) / 2, (height - 1) / 2
        zero = ops.zeros((count,))
        transform = ops.stack([a0, a1, cx - a0 * cx - a1 * cy, b0, b1, cy - b0 * cx - b1 * cy,
                               zero, zero], axis=1)
        return ops.image.affine_transform(ops.cast(images, "float32"), transform,
                                          interpolation="bilinear", fill_mode="reflect")

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "flip": self.flip, "rotation": self.rotation,
                "zoom": self.zoom, "seed": self.seed}


class FusedBatchNormalization(layers.BatchNormalization):
    """Keras' BatchNormalization (same weights, statistics and output), whose training step
    runs as TensorFlow's fused kernel: Keras 3 computes it from a dozen separate ops (moments,
    then normalise, and their gradients), 40 ms of a 155 ms training step at 256 px on 2 cores
    (bench/speed.py), against 7 ms fused. Only the training network uses it; the saved model
    has Keras' own layer, with these weights."""

    def call(self, inputs, training: bool | None = None, mask=None):
        if (not (training and self.trainable) or mask is not None or len(inputs.shape) != 4
                or self.axis not in (3, -1) or not (self.scale and self.center)
                or self.renorm or keras.backend.backend() != "tensorflow"):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        x = tf.cast(inputs, "float32") if inputs.dtype != tf.float16 else inputs
        none = tf.constant([], "float32")
        y, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
            x=x, scale=tf.cast(self.gamma, "float32"), offset=tf.cast(self.beta, "float32"),
            mean=none, variance=none, epsilon=self.epsilon, exponential_avg_factor=1.0,
            data_format="NHWC", is_training=True)
        # the kernel returns the unbiased variance; Keras' moving average takes the batch's own
        values = tf.cast(tf.size(x) // tf.shape(x)[-1], "float32")
        variance = variance * (values - 1) / values
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum
                                    + variance * (1 - self.momentum))
        return tf.cast(y, self.compute_dtype)


class ViewDropout(layers.Layer):
    """Zeroes a two-view model's face-found flag for ``rate`` of the images, drawn anew each
    step, while training only: the face view is then hidden from them, and the whole-picture
    network must learn on its own (else the pretrained face network, which learns faster,
    leaves it untrained). Never saved: the inference model has no such layer."""

    def __init__(self, rate: float, seed: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.rate, self.seed = rate, seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, flags, training: bool = True):
        if not training or not self.rate:
            return flags
        keep = keras.random.uniform(ops.shape(flags), seed=self.seed_generator) >= self.rate
        return flags * ops.cast(keep, flags.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


def augmentation(params: AugmentParams, seed: int) -> RandomAffine | None:
    """Random flips, rotations and zooms, active only while training; None if all are off."""
    if not (params.flip or params.rotation or params.zoom):
        return None
    return RandomAffine(params.flip, params.rotation, params.zoom, seed=seed, name="augment")


# Keras applications by backbone name: the constructor, and keyword arguments that put the
# application's own preprocessing inside it (each takes 0-255 floats).
APPLICATIONS = {
    "mobilenet_v3_small": ("MobileNetV3Small", {"include_preprocessing": True}),
    "efficientnet_b0": ("EfficientNetB0", {}),
}
BODY = "backbone"  # the application's layer in the model; the seed CNN's body is its blocks
FACE_NETWORK = "face_network"  # a two-view model's face view: the pretrained face network
SCAN_PREFIX = "scan_"  # its copy's layers, scanning the whole picture (train.face_scan)
MEMBER_PREFIX = "member_"  # the networks of an ensemble (train.members), member_0 first


def _keras_cache() -> Path:
    """Where Keras keeps the application weights it fetches ($KERAS_HOME/models)."""
    try:
        from keras.src.backend.config import keras_home  # not in Keras' public API
    except ImportError:
        return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"
    return Path(keras_home()) / "models"


def _application(params: TrainParams, image_size: int, pretrained: bool) -> keras.Model:
    """The backbone without its top, with ``train.weights`` loaded when ``pretrained``, or a
    one-line ``UserError`` naming the weights file to provide when it cannot be fetched."""
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
    if params.weights == "none":  # as trained, also when rebuilt for the weights copied in
        # Random weights learn their BatchNorm statistics: at the applications' momentum (0.999
        # in MobileNetV3) a few hundred steps leave them near 0 and 1, and every image gets
        # one class at inference (measured: val accuracy stuck at the majority share)
        for layer in application.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.momentum = params.batchnorm_momentum
    return application


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
        x = _application(params, image_size, pretrained)(x)  # BatchNorm: see set_trainable
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


def body_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The layers the frozen phase freezes, in order: a two-view model's face network, the
    application's own layers, or the seed CNN's blocks (every layer between the augmentation
    and the pooling head)."""
    with contextlib.suppress(ValueError):
        return [*model.get_layer(FACE_NETWORK).layers,
                *(layer for layer in model.layers if layer.name.startswith(SCAN_PREFIX)
                  and layer.weights)]
    try:
        return list(model.get_layer(BODY).layers)
    except ValueError:
        return [layer for layer in model.layers if layer.name.startswith("block")]


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


def without_augmentation(model: keras.Model, params: TrainParams, image_size: int) -> keras.Model:
    """The trained weights in a float32 model with no augmentation block, for saving."""
    keras.mixed_precision.set_global_policy("float32")  # a GPU run computed in float16
    face = None
    with contextlib.suppress(ValueError):  # a two-view model: its face network's architecture
        face = keras.models.clone_model(model.get_layer(FACE_NETWORK))
    inference = build_model(params, image_size, seed=0, augment=False, pretrained=False, face=face)
    for layer in inference.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return inference


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
