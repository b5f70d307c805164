"""The tfrecords stage: resize each split's images and write them as sharded TFRecords.

Worker processes decode, orient, convert, resize and encode (the CPU-heavy part,
in pipeline/vision/images.py so that a worker imports nothing else); this process
serialises and writes, without TensorFlow. Each shard is written under a
temporary name and renamed when complete, inside a folder that replaces the old
output only when every shard is done. Outputs are bit-identical run to run.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.config.faces import FacesParams
from pipeline.config.loader import load_sections
from pipeline.config.tfrecords import TfrecordsParams
from pipeline.contracts import features
from pipeline.contracts.split import SPLITS
from pipeline.runtime.entry import main
from pipeline.runtime.outputs import read_records, replacing_dir
from pipeline.runtime.workers import parallel_map
from pipeline.vision.faces import FaceCrop
from pipeline.vision.images import SquareJob, encoded_square

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TfrecordsReport:
    counts: dict[str, dict[str, int]]  # split -> class -> images
    shards: dict[str, int]
    bytes: int
    faces: dict[str, dict[str, int]] | None  # crop face or views: split -> found / none


def crop_contract(params: TfrecordsParams, faces: FacesParams | None) -> dict:
    """The records' (and so the model's) ``crop`` entry, which predict reads back."""
    if params.crop == "none":
        return {"kind": "none"}
    if faces is None:
        raise ValueError(f"tfrecords.crop {params.crop} needs the faces section of params.yaml")
    contract = {"kind": params.crop, "margin": params.face_margin, "faces": faces.model_dump()}
    return contract | ({"face_size": params.face_size} if params.crop == "views" else {})


def tfrecords(split_path: Path, raw_dir: Path, out_dir: Path, params: TfrecordsParams,
              faces: FacesParams | None = None) -> TfrecordsReport:
    """Write ``out_dir/<split>-NNNNN-of-NNNNN.tfrecord`` shards and ``meta.json``; ``faces``
    (the detector) is needed for ``crop: face`` and ``crop: views``."""
    rows = read_records(split_path, ("file", "label", "sha256", "split"), "split", "split")
    class_names = sorted({r["label"] for r in rows})
    ordered = sorted(rows, key=lambda r: (SPLITS.index(r["split"]), r["sha256"], r["label"]))
    contract = crop_contract(params, faces)
    jobs = [SquareJob(raw_dir / r["file"], params.image_size, params.resize, params.encoding,
                      params.jpeg_quality, FaceCrop.of(contract),
                      features.face_size({"crop": contract})) for r in ordered]
    found: dict[str, Counter] = {s: Counter() for s in SPLITS}
    with replacing_dir(out_dir) as tmp:
        shards = _write_shards(tmp, ordered, parallel_map(encoded_square, jobs, params.workers,
                                                           "tfrecords"), class_names, params, found)
        face_counts = None if params.crop == "none" else {
            s: {"found": found[s]["found"], "none": found[s]["none"]} for s in SPLITS}
        counts = {s: dict(sorted(Counter(r["label"] for r in rows if r["split"] == s).items()))
                  for s in SPLITS}
        features.write_meta(tmp, features.records_meta(
            params.image_size, class_names, counts, shards, params.encoding, params.resize,
            contract, face_counts))
        total_bytes = sum(p.stat().st_size for p in tmp.glob("*.tfrecord"))
    return TfrecordsReport(counts=counts, shards=shards, bytes=total_bytes, faces=face_counts)


def _write_shards(folder: Path, ordered: list[dict[str, str]],
                  encoded: Iterator[tuple[bytes, bool | None, bytes | None]], class_names: list[str],
                  params: TfrecordsParams, found: dict[str, Counter]) -> dict[str, int]:
    """Write each split's shards, each under a temporary name until it is complete; count
    into ``found`` the images whose face was found or not."""
    shards: dict[str, int] = {}
    for split_name in SPLITS:
        members = [r for r in ordered if r["split"] == split_name]
        count = max(1, math.ceil(len(members) / params.shard_size))
        shards[split_name] = count
        for index in range(count):
            name = features.shard_name(split_name, index, count)
            partial = folder / f".{name}.partial"
            with features.RecordWriter(partial) as writer:
                for row in members[index * params.shard_size:(index + 1) * params.shard_size]:
                    data, face, face_view = next(encoded)
                    if face is not None:
                        found[split_name]["found" if face else "none"] += 1
                    writer.write(features.to_example(data, class_names.index(row["label"]),
                                                     row["sha256"], face, face_view))
            os.replace(partial, folder / name)
    return shards


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--split", type=Path, default=Path("data/split/split.jsonl"))
    parser.add_argument("--raw", type=Path, default=Path("data/raw"))
    parser.add_argument("--out", type=Path, default=Path("data/tfrecords"))


def run(args: argparse.Namespace) -> None:
    params = load_sections(args.params, tfrecords=TfrecordsParams, faces=FacesParams)
    report = tfrecords(args.split, args.raw, args.out, params.tfrecords, params.faces)
    logger.info("tfrecords: %s in %s shards (%.1f MB) in %s", report.counts, report.shards,
                report.bytes / 1e6, args.out)
    if report.faces:
        none = sum(c["none"] for c in report.faces.values())
        total = none + sum(c["found"] for c in report.faces.values())
        if params.tfrecords.crop == "face":
            logger.info("tfrecords: cropped to the largest face; %d of %d images had none and "
                        "are used whole (%s)", none, total, report.faces)
        else:
            logger.info("tfrecords: the whole picture and its largest face; %d of %d images had "
                        "none (the model sees them whole only) (%s)", none, total, report.faces)
    logger.debug("%s", asdict(report))


if __name__ == "__main__":  # as dvc.yaml runs it: under its own name, for its logger
    sys.exit(main(__spec__.name))
