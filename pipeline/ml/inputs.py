"""The training input pipeline: each epoch's shuffled train batches (the order a function of
the seed and the epoch alone, so a resumed run sees what an uninterrupted one would), the val
batches, a split in file order, and the class weights."""

from __future__ import annotations

import math
from pathlib import Path

from pipeline.config.train import TrainParams
from pipeline.contracts import features
from pipeline.runtime.errors import UserError


def counted(records: Path, meta: dict, split: str, batch: int):
    """One split's (inputs, label) batches in file order, its length known to Keras (without
    it Keras warns that the input "ran out of data")."""
    import tensorflow as tf

    return features.labelled(records, split, meta["image_size"]).apply(
        tf.data.experimental.assert_cardinality(sum(meta["counts"][split].values()))).batch(batch)


def training_inputs(records: Path, meta: dict, params: TrainParams, seed: int,
                    first_epoch: int = 0, last_epoch: int | None = None,
                    batch_size: int | None = None):
    """The train stream for epochs ``first_epoch`` to ``last_epoch``, its batches per epoch,
    and the val batches; ``batch_size`` is the global batch (train.batch_size unless the model
    is mirrored over several replicas)."""
    import tensorflow as tf

    size, counts = meta["image_size"], meta["counts"]
    batch = batch_size or params.batch_size
    for split_name in ("train", "val"):
        if not sum(counts[split_name].values()):
            raise UserError(f"{records / features.META}: the {split_name} split is empty; scrape "
                            "more images or change split.fractions in params.yaml")
    train_images = sum(counts["train"].values())
    # Known cardinality: Keras then knows an epoch's length from the start (no "ran out of data").
    train = features.labelled(records, "train", size).apply(
        tf.data.experimental.assert_cardinality(train_images))
    face = features.face_size(meta)
    if train_images * (size * size + face * face) * 3 <= params.cache_max_mb * 2**20:
        train = train.cache()  # decoded once; later epochs read memory
    buffer = min(params.shuffle_buffer, train_images)

    def epoch(number: tf.Tensor) -> tf.data.Dataset:
        return train.shuffle(buffer, seed=number + seed * 1_000_003).batch(batch)

    last = params.epochs if last_epoch is None else last_epoch
    stream = tf.data.Dataset.range(first_epoch, last).flat_map(epoch).prefetch(tf.data.AUTOTUNE)
    val = counted(records, meta, "val", batch).cache()
    return stream, math.ceil(train_images / batch), val.prefetch(tf.data.AUTOTUNE)


def class_weights(counts: dict[str, int], class_names: list[str], mode: str) -> dict[int, float] | None:
    """Balanced weights n / (classes * n_c), so each class adds the same total to the loss."""
    if mode == "none":
        return None
    total = sum(counts.values())
    return {i: total / (len(class_names) * max(counts.get(name, 0), 1))
            for i, name in enumerate(class_names)}
