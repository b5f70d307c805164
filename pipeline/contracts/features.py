"""The TFRecord format of happysad: the one module that writes and parses its examples.

Each ``tf.train.Example`` holds ``image`` (an encoded JPEG or PNG of
image_size x image_size RGB), ``label`` (the class index in meta.json's
``class_names``) and ``sha256`` (the raw file it came from, so any record can
be traced to its image and its split). Records cut with a face detector (meta.json's
``crop`` kind ``face`` or ``views``) add ``face_found`` (0 or 1); ``views`` records also
hold ``face``, the aligned face at ``crop.face_size`` px (black when none was found), beside
the whole picture in ``image``. Pixels stay uint8 0-255: the model maps them to [0, 1] with
its own Rescaling layer.

A records folder (``data/tfrecords``, the pretrain stage's faces, a crossval fold, a tuning
trial's view) is its shards and ``meta.json``; this module is the one that writes and reads
that file (:func:`write_meta`, :func:`read_meta`), so a change of format is one edit.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import google_crc32c

from pipeline.runtime.errors import UserError

if TYPE_CHECKING:
    import tensorflow as tf

PIXELS = {"dtype": "uint8", "stored_range": [0, 255], "model_input_range": [0.0, 1.0],
          "mapping": "x / 255, by the model's Rescaling layer"}


# Writing needs no TensorFlow: an Example is a few protobuf fields and a TFRecord is
# length + CRC framing, so the tfrecords stage skips TensorFlow's import time and
# ~450 MB of memory. tests/integration/test_tfrecords.py checks these bytes against TensorFlow's own.
def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if not value:
            out.append(low)
            return bytes(out)
        out.append(low | 0x80)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _bytes_feature(value: bytes) -> bytes:
    return _field(1, _field(1, value))  # Feature.bytes_list = 1, BytesList.value = 1


def _int64_feature(value: int) -> bytes:
    return _field(3, _field(1, _varint(value & 0xFFFFFFFFFFFFFFFF)))  # Int64List.value, packed


def to_example(image: bytes, label: int, sha256: str, face_found: bool | None = None,
               face: bytes | None = None) -> bytes:
    """One serialized ``tf.train.Example``, keys in sorted order (deterministic bytes)."""
    features = {"image": _bytes_feature(image), "label": _int64_feature(label),
                "sha256": _bytes_feature(sha256.encode())}
    if face_found is not None:
        features["face_found"] = _int64_feature(int(face_found))
    if face is not None:
        features["face"] = _bytes_feature(face)
    entries = b"".join(_field(1, _field(1, key.encode()) + _field(2, value))
                       for key, value in sorted(features.items()))
    return _field(1, entries)  # Example.features = 1; Features.feature = 1 (map entries)


def _masked_crc(data: bytes) -> bytes:
    crc = google_crc32c.value(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


class RecordWriter:
    """Writes the TFRecord framing: length, masked CRC32C of the length, data, CRC of the data."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "wb")  # noqa: SIM115 - closed by __exit__

    def write(self, record: bytes) -> None:
        length = struct.pack("<Q", len(record))
        self._file.write(length + _masked_crc(length) + record + _masked_crc(record))

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._file.close()


# Input names of the model: the whole picture, and for a two-view model its face and flag
PIXELS_INPUT, FACE_INPUT, FACE_FOUND_INPUT = "pixels", "face", "face_found"


def face_size(meta: dict) -> int:
    """The face view's side of records (or of a model's input contract); 0: no face view."""
    crop = meta.get("crop") or {}
    return int(crop.get("face_size", 0)) if crop.get("kind") == "views" else 0


def has_face_flag(meta: dict) -> bool:
    """Whether each record says if a face was found (records cut with a detector)."""
    return (meta.get("crop") or {}).get("kind") in ("face", "views")


def feature_spec(flag: bool = False, face: bool = False) -> dict[str, tf.io.FixedLenFeature]:
    import tensorflow as tf

    spec = {
        "image": tf.io.FixedLenFeature([], tf.string),
        "label": tf.io.FixedLenFeature([], tf.int64),
        "sha256": tf.io.FixedLenFeature([], tf.string),
    }
    if flag:
        spec["face_found"] = tf.io.FixedLenFeature([], tf.int64)
    if face:
        spec["face"] = tf.io.FixedLenFeature([], tf.string)
    return spec


def parse_ids(serialized: tf.Tensor) -> tuple[str, int]:
    """The ``sha256`` and ``label`` of one serialized example, without decoding its images."""
    import tensorflow as tf

    spec = {k: v for k, v in feature_spec().items() if k in ("sha256", "label")}
    example = tf.io.parse_single_example(serialized, spec)
    return example["sha256"].numpy().decode(), int(example["label"])


def parse(serialized: tf.Tensor, image_size: int, flag: bool = False,
          face_side: int = 0) -> dict[str, tf.Tensor]:
    """A serialized example as uint8 ``image`` [size, size, 3], int64 ``label``, ``sha256``,
    and with ``flag`` int64 ``face_found``, with ``face_side`` uint8 ``face`` [side, side, 3]."""
    import tensorflow as tf

    example = tf.io.parse_single_example(serialized, feature_spec(flag, bool(face_side)))
    image = tf.io.decode_image(example["image"], channels=3, expand_animations=False)
    image.set_shape([image_size, image_size, 3])
    parsed = {"image": image, "label": example["label"], "sha256": example["sha256"]}
    if flag:
        parsed["face_found"] = example["face_found"]
    if face_side:
        face = tf.io.decode_image(example["face"], channels=3, expand_animations=False)
        face.set_shape([face_side, face_side, 3])
        parsed["face"] = face
    return parsed


def model_inputs(record: dict):
    """What the model takes from parsed records (one or a batch): the image, or for a two-view
    model the dict of its three inputs."""
    import tensorflow as tf

    if "face" not in record:
        return record["image"]
    return {PIXELS_INPUT: record["image"], FACE_INPUT: record["face"],
            FACE_FOUND_INPUT: tf.cast(record["face_found"], tf.float32)[..., None]}


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


def shard_files(directory: Path, split: str) -> list[str]:
    return sorted(str(p) for p in Path(directory).glob(f"{split}-*-of-*.tfrecord"))


def dataset(directory: Path, split: str, image_size: int, meta: dict | None = None) -> tf.data.Dataset:
    """The examples of one split, parsed in parallel, in file order; ``meta`` (meta.json,
    read when not given) says which fields they hold."""
    import tensorflow as tf

    files = shard_files(directory, split)
    if not files:
        raise FileNotFoundError(f"{directory}: no {split} shards")
    if meta is None:
        path = Path(directory) / META
        meta = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    flag, side = has_face_flag(meta), face_size(meta)
    records = tf.data.TFRecordDataset(files, num_parallel_reads=min(len(files), 8))
    return records.map(lambda s: parse(s, image_size, flag, side),
                       num_parallel_calls=tf.data.AUTOTUNE)


META = "meta.json"  # a records folder's description, beside its shards


def records_meta(image_size: int, class_names: list[str], counts: dict[str, dict[str, int]],
                 shards: dict[str, int], encoding: str, resize: str, crop: dict,
                 faces: dict[str, dict[str, int]] | None = None) -> dict:
    """What ``meta.json`` says of a records folder: the input contract of its images (size,
    resize, crop, pixels), the classes, and per split the images per class and the shards;
    ``faces``: per split, the images whose face was found or not (records cut with a detector)."""
    return {"image_size": image_size, "channels": 3, "class_names": class_names,
            "counts": counts, "shards": shards, "encoding": encoding, "resize": resize,
            "crop": crop, "pixels": PIXELS, **({"faces": faces} if faces else {})}


def part_of(meta: dict, counts: dict[str, dict[str, int]], shards: dict[str, int]) -> dict:
    """The meta of a folder made from another's records (a crossval fold, a trial's train and
    val view): the same contract, its own ``counts`` and ``shards``."""
    return {**meta, "counts": counts, "shards": shards}


def write_meta(directory: Path, meta: dict) -> None:
    """``meta.json`` of a records folder (the only writer: its shards are written first)."""
    (Path(directory) / META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def meta_text(directory: Path) -> str:
    """``meta.json`` as written, for a key that must change when the records do."""
    return (Path(directory) / META).read_text(encoding="utf-8")


def read_meta(directory: Path) -> dict:
    """meta.json of a records folder, or a one-line UserError saying how to make it."""
    path = Path(directory) / META
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: not found; run the tfrecords stage first (dvc repro tfrecords)") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err}); rerun the tfrecords stage") from None
    if len(meta.get("class_names", [])) != 2:
        raise UserError(f"{path}: the model needs exactly 2 classes, found "
                        f"{meta.get('class_names')}; check scrape.classes in params.yaml")
    return meta


def labelled(directory: Path, split: str, image_size: int) -> tf.data.Dataset:
    """(model inputs, float32 [label]) pairs of one split, as Keras' fit and evaluate take
    them: the uint8 image, or a two-view model's dict (:func:`model_inputs`)."""
    import tensorflow as tf

    return dataset(directory, split, image_size).map(
        lambda r: (model_inputs(r), tf.cast(r["label"], tf.float32)[None]),
        num_parallel_calls=tf.data.AUTOTUNE)
