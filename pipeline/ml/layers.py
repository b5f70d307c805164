"""The network's own layers: augmentation as one resample (``RandomAffine``), BatchNorm as
TensorFlow's fused kernel while training (``FusedBatchNormalization``), and the two-view
model's ``ViewDropout``. Only the training network has them: the saved model holds Keras' own
layers (``network.without_augmentation``), so it loads in safe mode anywhere."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import keras
from keras import layers, ops

if TYPE_CHECKING:  # annotations only: no runtime dependency on the schema
    from pipeline.config.train import AugmentParams


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
