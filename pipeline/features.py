"""The TFRecord format of happysad: the one module that writes and parses its examples.

Each ``tf.train.Example`` holds ``image`` (an encoded JPEG or PNG of
image_size x image_size RGB), ``label`` (the class index in meta.json's
``class_names``) and ``sha256`` (the raw file it came from, so any record can
be traced to its image and its split). Pixels stay uint8 0-255: the model
maps them to [0, 1] with its own Rescaling layer.
"""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf

FEATURE_SPEC = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.int64),
    "sha256": tf.io.FixedLenFeature([], tf.string),
}
PIXELS = {"dtype": "uint8", "stored_range": [0, 255], "model_input_range": [0.0, 1.0],
          "mapping": "x / 255, by the model's Rescaling layer"}


def to_example(image: bytes, label: int, sha256: str) -> bytes:
    """One serialized example."""
    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
        "sha256": tf.train.Feature(bytes_list=tf.train.BytesList(value=[sha256.encode()])),
    }
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    return example.SerializeToString(deterministic=True)  # map order fixed: same bytes every run


def parse(serialized: tf.Tensor, image_size: int) -> dict[str, tf.Tensor]:
    """A serialized example as uint8 ``image`` [size, size, 3], int64 ``label``, ``sha256``."""
    example = tf.io.parse_single_example(serialized, FEATURE_SPEC)
    image = tf.io.decode_image(example["image"], channels=3, expand_animations=False)
    image.set_shape([image_size, image_size, 3])
    return {"image": image, "label": example["label"], "sha256": example["sha256"]}


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


def shard_files(directory: Path, split: str) -> list[str]:
    return sorted(str(p) for p in Path(directory).glob(f"{split}-*-of-*.tfrecord"))


def dataset(directory: Path, split: str, image_size: int) -> tf.data.Dataset:
    """The examples of one split, parsed in parallel, in file order."""
    files = shard_files(directory, split)
    if not files:
        raise FileNotFoundError(f"{directory}: no {split} shards")
    records = tf.data.TFRecordDataset(files, num_parallel_reads=min(len(files), 8))
    return records.map(lambda s: parse(s, image_size), num_parallel_calls=tf.data.AUTOTUNE)
