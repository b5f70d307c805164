"""The training network's two fast layers do what Keras' own layers do.

FusedBatchNormalization must give Keras' BatchNormalization's outputs, moving statistics and
gradients; RandomAffine must mirror, turn and zoom within the params' bounds about the centre.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.ml.layers import FusedBatchNormalization, RandomAffine


def test_fused_batch_norm_matches_keras_in_training_and_inference() -> None:
    import keras
    import tensorflow as tf

    rng = np.random.default_rng(3)
    x = tf.constant(rng.normal(2.0, 3.0, (4, 9, 7, 5)).astype("float32"))
    stock = keras.layers.BatchNormalization(momentum=0.9)
    fused = FusedBatchNormalization(momentum=0.9)
    stock.build(x.shape)
    fused.build(x.shape)
    start = [rng.normal(size=5).astype("float32") + offset for offset in (1.0, 0.0, 0.5, 2.0)]
    start[3] = np.abs(start[3])  # a variance
    stock.set_weights(start)
    fused.set_weights(start)
    weights = tf.constant(rng.normal(size=x.shape).astype("float32"))
    outputs, gradients = [], []
    for layer in (stock, fused):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * weights)  # a loss whose gradients are far from 0
        gradients.append(tape.gradient(loss, [x, layer.gamma, layer.beta]))
        outputs.append(y.numpy())
    np.testing.assert_allclose(outputs[1], outputs[0], rtol=1e-5, atol=1e-5)
    for fast, slow in zip(gradients[1], gradients[0], strict=True):
        np.testing.assert_allclose(fast.numpy(), slow.numpy(), rtol=1e-4, atol=1e-4)
    for fast, slow in zip(fused.get_weights(), stock.get_weights(), strict=True):
        np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-6)  # moving mean and variance
    assert not np.allclose(fused.get_weights()[2], start[2])  # and they did move
    np.testing.assert_allclose(fused(x, training=False).numpy(), stock(x, training=False).numpy(),
                               rtol=1e-6, atol=1e-6)


def _dots(layer: RandomAffine, size: int, offset: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Where a bright dot ``offset`` px right of the centre lands in ``count`` augmented images:
    its distance from the centre and its angle (radians)."""
    images = np.zeros((count, size, size, 1), "float32")
    centre = size // 2
    images[:, centre - 1:centre + 2, centre + offset - 1:centre + offset + 2] = 1.0
    out = np.asarray(layer(images, training=True))[..., 0]
    rows, cols = np.mgrid[0:size, 0:size]
    weight = out.sum(axis=(1, 2))
    y = (out * rows).sum(axis=(1, 2)) / weight - centre
    x = (out * cols).sum(axis=(1, 2)) / weight - centre
    return np.hypot(x, y), np.arctan2(y, x)


def test_random_affine_turns_and_zooms_within_bounds_about_the_centre() -> None:
    size, offset = 65, 20
    turn = RandomAffine(flip=False, rotation=0.05, zoom=0.0, seed=1)
    distance, angle = _dots(turn, size, offset, 64)
    assert np.all(np.abs(distance - offset) < 1.0)  # a turn about the centre keeps the distance
    bound = 2 * math.pi * 0.05
    assert np.all(np.abs(angle) <= bound + 0.05) and np.abs(angle).max() > bound / 2
    zoom = RandomAffine(flip=False, rotation=0.0, zoom=0.2, seed=2)
    distance, angle = _dots(zoom, size, offset, 64)
    assert np.all(np.abs(angle) < 0.02)  # no turn
    assert np.all((distance > offset / 1.2 - 1) & (distance < offset / 0.8 + 1))
    assert distance.min() < offset - 2 and distance.max() > offset + 2  # in and out


def test_random_affine_mirrors_about_half_the_images_and_leaves_inference_alone() -> None:
    rng = np.random.default_rng(4)
    images = rng.uniform(0, 1, (40, 16, 16, 3)).astype("float32")
    flip = RandomAffine(flip=True, rotation=0.0, zoom=0.0, seed=3)
    out = np.asarray(flip(images, training=True))
    same = [np.allclose(o, i, atol=1e-5) for o, i in zip(out, images, strict=True)]
    mirrored = [np.allclose(o, i[:, ::-1], atol=1e-5) for o, i in zip(out, images, strict=True)]
    assert all(s != m for s, m in zip(same, mirrored, strict=True))  # each one or the other
    assert 10 <= sum(mirrored) <= 30
    assert np.array_equal(np.asarray(flip(images, training=False)), images)


@pytest.mark.parametrize("seed", [5])
def test_random_affine_draws_follow_the_seed(seed: int) -> None:
    images = np.random.default_rng(6).uniform(0, 1, (8, 24, 24, 3)).astype("float32")
    first = np.asarray(RandomAffine(True, 0.05, 0.1, seed=seed)(images, training=True))
    again = np.asarray(RandomAffine(True, 0.05, 0.1, seed=seed)(images, training=True))
    other = np.asarray(RandomAffine(True, 0.05, 0.1, seed=seed + 1)(images, training=True))
    assert np.array_equal(first, again) and not np.allclose(first, other)


def test_label_smoothing_moves_the_loss_minimum_off_the_hard_labels() -> None:
    import keras

    from pipeline.ml.model import compile_model

    def loss_at(smoothing: float, p: float) -> float:
        model = compile_model(keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)]), 1e-3,
                              smoothing)
        return float(model.loss(np.array([[1.0]]), np.array([[p]])))

    # smoothing 0.2 trains a label 1 towards 0.9: there the loss is lowest, not at 0.99
    assert loss_at(0.2, 0.9) < loss_at(0.2, 0.99) and loss_at(0.2, 0.9) < loss_at(0.2, 0.8)
    assert loss_at(0.0, 0.99) < loss_at(0.0, 0.9)  # and without it, surer is better


def test_the_saved_form_of_a_member_leaves_the_runs_precision_policy_alone(
        tiny_train_params) -> None:
    """A mixed-precision run (a GPU's) builds each member's saved form in float32, and the next
    member is built under the run's own policy, not float32 (Keras' policy is global)."""
    import keras

    from pipeline.ml.network import build_model, without_augmentation

    before = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        first = build_model(tiny_train_params, 32, seed=1)
        saved = without_augmentation(first, tiny_train_params, 32)
        second = build_model(tiny_train_params, 32, seed=2)
        policy = keras.mixed_precision.global_policy().name
    finally:
        keras.mixed_precision.set_global_policy(before)
    assert saved.get_layer("block1_conv").dtype_policy.name == "float32"
    assert policy == "mixed_float16"
    assert second.get_layer("block1_conv").dtype_policy.name == first.get_layer(
        "block1_conv").dtype_policy.name == "mixed_float16"
