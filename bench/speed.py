"""Benchmark of one training step at params.yaml's image size: images/s, FLOP/s, share of the
machine's fp32 peak and where the step's time goes, before and after, side by side.

- ``before``: the network as the seed CNN had it: Keras' RandomFlip, RandomRotation and
  RandomZoom (three resamples of every image) and Keras' BatchNormalization (a dozen ops).
- ``after``: the training network of ``pipeline.ml.model``: RandomAffine (one resample) and
  FusedBatchNormalization (TensorFlow's fused kernel), the same weights and draws' bounds.
- ``after, batch 32``: the same at twice the batch (fewer, larger steps; a training choice,
  not only a speed one: see docs/performance.md).

All three train on the same synthetic uint8 batches from memory (the input pipeline's own
cost is bench.model's), with op determinism on as the train stage has it on a CPU, in rounds
that alternate between them; each figure is the median round. FLOPs are counted from the
layers (2 per multiply-add; training = 3 x the forward pass: the backward pass costs about
twice the forward). The peak is measured: the best of a few 4096 x 4096 fp32 matmuls.

Run: ``uv run python -m bench.speed [--rounds 5] [--steps 24] [--no-profile]``.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import statistics
import tempfile
import time
from pathlib import Path

from bench import print_table

Row = tuple[str, str, str]
REPO = Path(__file__).resolve().parents[1]


def before_network(params, image_size: int, seed: int):
    """The seed CNN as it was built before: Keras' three random layers and its BatchNorm, around
    the same body (a linear chain, so its layers can be called again in order)."""
    import keras

    from pipeline.ml.network import build_model

    stock = build_model(params, image_size, seed, augment=False)  # Keras' BatchNormalization
    aug = params.augment
    steps = [keras.layers.RandomFlip("horizontal", seed=seed)] if aug.flip else []
    if aug.rotation:
        steps.append(keras.layers.RandomRotation(aug.rotation, fill_mode="reflect", seed=seed + 1))
    if aug.zoom:
        steps.append(keras.layers.RandomZoom(aug.zoom, fill_mode="reflect", seed=seed + 2))
    inputs = keras.Input(stock.input.shape[1:], dtype="uint8")
    x = stock.layers[1](inputs)  # the rescaling
    for step in steps:
        x = step(x)
    for layer in stock.layers[2:]:
        x = layer(x)
    return keras.Model(inputs, x, name="before")


def training_flops(model) -> float:
    """FLOPs of one training image: 3 x the forward pass's 2 x multiply-adds of every Conv2D
    and Dense layer (the rest, BatchNorm, pooling and activations, is a few percent more)."""
    import keras

    forward = 0
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.Conv2D):
            out = layer.output.shape
            kernel = layer.kernel.shape
            forward += 2 * out[1] * out[2] * kernel[0] * kernel[1] * kernel[2] * kernel[3] / (
                layer.groups if hasattr(layer, "groups") else 1)
        elif isinstance(layer, keras.layers.Dense):
            forward += 2 * layer.kernel.shape[0] * layer.kernel.shape[1]
    return 3.0 * forward


def _all_layers(model):
    for layer in model.layers:
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)
        else:
            yield layer


def matmul_peak(size: int = 4096, repeats: int = 5) -> float:
    """FLOP/s of the best of ``repeats`` fp32 ``size`` x ``size`` matmuls."""
    import tensorflow as tf

    a = tf.random.stateless_normal((size, size), seed=(1, 2))
    b = tf.random.stateless_normal((size, size), seed=(3, 4))
    product = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)))
    product().numpy()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        product().numpy()
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def _dataset(image_size: int, batch: int, batches: int = 6):
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    count = batch * batches
    images = rng.integers(0, 256, (count, image_size, image_size, 3), dtype=np.uint8)
    labels = (np.arange(count) % 2).astype("float32")
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch).cache().repeat()


def _breakdown(model, data, steps: int) -> dict[str, float]:
    """Milliseconds per step by kind of op, from TensorFlow's profiler (empty if its tools are
    not in this TensorFlow)."""
    import tensorflow as tf

    try:
        from tensorflow.python.profiler.internal import _pywrap_profiler_plugin as plugin
    except ImportError:
        return {}
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
        tf.profiler.experimental.stop()
        planes = glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)
        raw, ok = plugin.xspace_to_tools_data(planes, "framework_op_stats", {})
    if not ok:
        return {}
    kinds: collections.Counter[str] = collections.Counter()
    for row in json.loads(raw)[0]["rows"]:
        op_type, name, self_us = row["c"][2]["v"], row["c"][3]["v"], row["c"][7]["v"]
        if op_type == "IDLE":
            continue
        if "/random_" in name or "/augment" in name:
            kind = "augmentation"
        elif "_bn" in name:
            kind = "batchnorm"
        elif "Conv2D" in op_type:
            kind = "convolutions"
        elif "pool" in name:
            kind = "pooling"
        else:
            kind = "the rest"
        kinds[kind] += self_us / steps / 1000
    return dict(kinds)


def measure(rounds: int, steps: int, profile: bool) -> list[Row]:
    import keras

    from pipeline.config.params import load_params
    from pipeline.ml.device import configure_runtime
    from pipeline.ml.model import compile_model
    from pipeline.ml.network import build_model

    params = load_params(REPO / "params.yaml")
    size, seed, train = params.tfrecords.image_size, params.seed, params.train
    device = configure_runtime(seed)
    variants = {
        "before": (lambda: before_network(train, size, seed), train.batch_size),
        "after": (lambda: build_model(train, size, seed), train.batch_size),
        "after, batch 32": (lambda: build_model(train, size, seed), 32),
    }
    models, data = {}, {}
    for name, (build, batch) in variants.items():
        models[name] = compile_model(build(), train.learning_rate)
        data[name] = _dataset(size, batch)
        models[name].fit(data[name], steps_per_epoch=3, epochs=1, verbose=0, shuffle=False)  # trace, warm up
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, (_, batch) in variants.items():
            started = time.perf_counter()
            models[name].fit(data[name], steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
            rates[name].append(steps * batch / (time.perf_counter() - started))
    peak = matmul_peak()
    flops = training_flops(models["after"])
    base = statistics.median(rates["before"])
    rows: list[Row] = [("fp32 peak (measured)", f"{peak / 1e9:.0f} GFLOP/s",
                        f"best 4096x4096 matmul on {device}; training FLOPs per image "
                        f"{flops / 1e9:.2f} G at {size} px (3 x forward)")]
    for name, (_, batch) in variants.items():
        rate = statistics.median(rates[name])
        spread = f"{min(rates[name]):.0f}-{max(rates[name]):.0f}"
        rows.append((f"{name}: training", f"{rate:.0f} img/s",
                     f"x{rate / base:.2f} before; {rate * flops / 1e9:.0f} GFLOP/s = "
                     f"{rate * flops / peak:.0%} of peak; batch {batch}; rounds {spread}"))
    if profile:
        for name in ("before", "after"):
            kinds = _breakdown(models[name], data[name], steps)
            if kinds:
                total = sum(kinds.values())
                parts = ", ".join(f"{k} {v:.0f} ({v / total:.0%})"
                                  for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]))
                rows.append((f"{name}: a step's op time", f"{total:.0f} ms", parts))
    keras.backend.clear_session()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=24, help="training steps per round")
    parser.add_argument("--no-profile", action="store_true", help="skip the op breakdown")
    args = parser.parse_args(argv)
    from pipeline.runtime.log import load_tensorflow, setup_logging

    setup_logging(False)
    load_tensorflow()
    print_table("happysad training speed", measure(args.rounds, args.steps, not args.no_profile))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
