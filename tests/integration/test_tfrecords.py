"""The tfrecords stage: records parse back to the right pixels, labels and splits; no partials."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.config.params import Params
from pipeline.config.split import SplitParams
from pipeline.runtime.errors import UserError
from pipeline.stages.tfrecords import tfrecords
from pipeline.vision.images import encode, resize_square, square_rgb
from testing.fixtures import face_on_a_canvas

SPLIT = SplitParams(seed=3, fractions={"train": 0.5, "val": 0.25, "test": 0.25})


@pytest.fixture(scope="module")
def split_file(tiny_raw: Path, tiny_clean_params, tmp_path_factory) -> Path:
    from pipeline.stages.clean import clean
    from pipeline.stages.split import split

    work = tmp_path_factory.mktemp("records")
    clean(tiny_raw, work / "clean", tiny_clean_params)
    split(work / "clean" / "images.jsonl", work / "split", SPLIT)
    return work / "split" / "split.jsonl"


def small(repo_params: Params, **changes: object):
    return repo_params.tfrecords.model_copy(update={"image_size": 32, "shard_size": 5,
                                                    "workers": 1, **changes})


def read_records(out: Path, split_name: str, size: int) -> list[dict]:
    from pipeline.contracts import features

    return [{"image": r["image"].numpy(), "label": int(r["label"]),
             "sha256": r["sha256"].numpy().decode()}
            for r in features.dataset(out, split_name, size)]


def test_records_parse_back_to_pixels_labels_and_splits(split_file: Path, tiny_raw: Path,
                                                        repo_params: Params, tmp_path: Path) -> None:
    params = small(repo_params, encoding="png")  # lossless, so pixels compare exactly
    report = tfrecords(split_file, tiny_raw, tmp_path / "rec", params)
    meta = json.loads((tmp_path / "rec" / "meta.json").read_text())
    rows = [json.loads(line) for line in split_file.read_text().splitlines()]
    assert meta["class_names"] == ["happy", "sad"] and meta["image_size"] == 32
    assert meta["counts"] == report.counts and meta["pixels"]["model_input_range"] == [0.0, 1.0]
    for split_name in ("train", "val", "test"):
        expected = {r["sha256"]: r for r in rows if r["split"] == split_name}
        records = read_records(tmp_path / "rec", split_name, 32)
        assert sorted(r["sha256"] for r in records) == sorted(expected)
        assert report.shards[split_name] == max(1, -(-len(expected) // 5))
        for record in records:
            row = expected[record["sha256"]]
            assert meta["class_names"][record["label"]] == row["label"]
            want = square_rgb((tiny_raw / row["file"]).read_bytes(), 32, "pad")
            assert record["image"].dtype == np.uint8 and record["image"].shape == (32, 32, 3)
            assert np.array_equal(record["image"], np.asarray(want))


def test_jpeg_records_are_close_and_runs_are_bit_identical(split_file: Path, tiny_raw: Path,
                                                           repo_params: Params, tmp_path: Path) -> None:
    params = small(repo_params, workers=2)
    tfrecords(split_file, tiny_raw, tmp_path / "a", params)
    tfrecords(split_file, tiny_raw, tmp_path / "b", small(repo_params))
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    rows = {json.loads(r)["sha256"]: json.loads(r) for r in split_file.read_text().splitlines()}
    for record in read_records(tmp_path / "a", "test", 32):
        square = square_rgb((tiny_raw / rows[record["sha256"]]["file"]).read_bytes(), 32, "pad")
        assert np.abs(record["image"] - square.astype(float)).mean() < 8.0  # lossy, but close
        jpeg = np.asarray(Image.open(io.BytesIO(encode(square, "jpeg", 95))), dtype=float)
        assert np.abs(record["image"] - jpeg).mean() < 3.0  # that JPEG (TF and PIL decode it)


def test_a_crash_leaves_no_shard_under_a_final_name(split_file: Path, tiny_raw: Path,
                                                    repo_params: Params, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.contracts import features

    out = tmp_path / "rec"
    tfrecords(split_file, tiny_raw, out, small(repo_params))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    written = []

    def failing(image: bytes, label: int, sha256: str, *face: object) -> bytes:
        if len(written) == 7:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-shard
        written.append(sha256)
        return real(image, label, sha256, *face)

    real = features.to_example
    monkeypatch.setattr(features, "to_example", failing)
    with pytest.raises(KeyboardInterrupt):
        tfrecords(split_file, tiny_raw, out, small(repo_params, image_size=24))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # old output intact
    partial = out.with_name("rec.partial")
    finished = [p.name for p in partial.iterdir() if p.name.endswith(".tfrecord")
                and not p.name.startswith(".")]
    train = sum(json.loads(line)["split"] == "train" for line in split_file.read_text().splitlines())
    shards = -(-train // small(repo_params).shard_size)
    assert shards >= 2 and finished == [f"train-00000-of-{shards:05d}.tfrecord"]  # the one that completed
    assert [p.name for p in partial.iterdir() if p.name.startswith(".")]  # the cut one


def test_missing_raw_file_is_one_line_and_writes_nothing(split_file: Path, tiny_raw: Path,
                                                         repo_params: Params, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    with pytest.raises(UserError, match=r"raw/(happy|sad)/[0-9a-f]{64}\.\w+: cannot read"):
        tfrecords(split_file, raw, tmp_path / "rec", small(repo_params))
    assert not (tmp_path / "rec").exists()
    with pytest.raises(UserError, match=r"split.jsonl: not found; run the split stage"):
        tfrecords(tmp_path / "split.jsonl", raw, tmp_path / "rec", small(repo_params))


@pytest.mark.parametrize(("policy", "check"), [
    ("pad", lambda a: a[:8].max() == 0 and a[24:].max() == 0 and a[12:20].min() > 0),
    ("crop", lambda a: a.min() > 0),
    ("stretch", lambda a: a.min() > 0),
])
def test_resize_policies(policy: str, check) -> None:
    wide = Image.new("RGB", (200, 100), (200, 100, 50))
    square = np.asarray(resize_square(wide, 32, policy))
    assert square.shape == (32, 32, 3) and check(square)


def test_examples_and_framing_match_tensorflow_byte_for_byte(tmp_path: Path) -> None:
    import tensorflow as tf

    from pipeline.contracts import features

    for image, label, sha in [(b"\xff\xd8" + bytes(range(256)) * 3, 1, "ab" * 32), (b"", 0, "")]:
        ours = features.to_example(image, label, sha)
        theirs = tf.train.Example(features=tf.train.Features(feature={
            "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
            "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
            "sha256": tf.train.Feature(bytes_list=tf.train.BytesList(value=[sha.encode()])),
        })).SerializeToString(deterministic=True)
        assert ours == theirs
    records = [features.to_example(bytes([i]) * (i * 300), i, f"{i:064x}") for i in range(5)]
    with features.RecordWriter(tmp_path / "ours.tfrecord") as writer:
        for record in records:
            writer.write(record)
    with tf.io.TFRecordWriter(str(tmp_path / "tf.tfrecord")) as writer:
        for record in records:
            writer.write(record)
    assert (tmp_path / "ours.tfrecord").read_bytes() == (tmp_path / "tf.tfrecord").read_bytes()


def test_large_jpeg_decodes_scaled_down_to_nearly_the_same_pixels() -> None:
    from demo.faces import FaceStyle, draw_face
    from pipeline.vision.images import decode_rgb

    photo = draw_face(np.random.default_rng(3), "happy", FaceStyle(min_side=1100, max_side=1100))
    buf = io.BytesIO()
    photo.save(buf, "JPEG", quality=92)
    data = buf.getvalue()
    assert decode_rgb(data, (128, "pad")).size == (138, 138)  # DCT-scaled by 1/8 in decoding
    full = resize_square(decode_rgb(data), 128, "pad").astype(float)
    assert np.abs(square_rgb(data, 128, "pad") - full).mean() < 2.0




def test_face_crop_cuts_out_the_face_and_keeps_a_faceless_image_whole(repo_params: Params) -> None:
    from pipeline.stages.tfrecords import crop_contract
    from pipeline.vision.faces import FaceCrop
    from pipeline.vision.images import model_view

    params = small(repo_params, crop="face", face_margin=0.25)
    crop = FaceCrop.of(crop_contract(params, repo_params.faces))
    canvas, _ = face_on_a_canvas()
    region = crop(canvas)
    assert region is not None
    # the region is the face's neighbourhood: a small part of the canvas, and mostly face
    assert region.shape[0] * region.shape[1] < 0.25 * canvas.shape[0] * canvas.shape[1]
    assert (region != 128).any(axis=2).mean() > 0.5
    data = encode(canvas, "png")
    view, found = model_view(data, 32, "pad", crop=crop)
    assert found is True and view.shape == (32, 32, 3)
    assert not np.array_equal(view, square_rgb(data, 32, "pad"))  # not the whole canvas
    flat = encode(np.full((120, 160, 3), 90, np.uint8), "png")
    view, found = model_view(flat, 32, "pad", crop=crop)
    assert found is False and np.array_equal(view, square_rgb(flat, 32, "pad"))  # used whole
    assert FaceCrop.of({"kind": "none"}) is None and FaceCrop.of(None) is None


def test_face_cropped_records_are_what_predict_computes(split_file: Path, tiny_raw: Path,
                                                        repo_params: Params, tmp_path: Path) -> None:
    """The crop travels in meta.json (and so the model's input contract): predict's conversion
    of each raw file gives exactly the stored pixels, and every image is counted once."""
    from pipeline.vision.faces import FaceCrop

    params = small(repo_params, encoding="png", crop="face")
    report = tfrecords(split_file, tiny_raw, tmp_path / "rec", params, repo_params.faces)
    meta = json.loads((tmp_path / "rec" / "meta.json").read_text())
    assert meta["crop"] == {"kind": "face", "margin": params.face_margin,
                            "faces": repo_params.faces.model_dump()}
    assert meta["faces"] == report.faces
    rows = {json.loads(line)["sha256"]: json.loads(line) for line in split_file.read_text().splitlines()}
    crop = FaceCrop.of(meta["crop"])
    for split_name in ("train", "val", "test"):
        records = read_records(tmp_path / "rec", split_name, 32)
        assert sum(report.faces[split_name].values()) == len(records)
        for record in records:
            data = (tiny_raw / rows[record["sha256"]]["file"]).read_bytes()
            assert np.array_equal(record["image"], square_rgb(data, 32, "pad", crop=crop))
    with pytest.raises(ValueError, match="needs the faces section"):
        tfrecords(split_file, tiny_raw, tmp_path / "rec2", params)
