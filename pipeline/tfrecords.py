"""The tfrecords stage: resize each split's images and write them as sharded TFRecords.

Worker processes decode, orient, convert and resize (the CPU-heavy part, free of
TensorFlow); this process serialises and writes. Each shard is written under a
temporary name and renamed when complete, inside a folder that replaces the old
output only when every shard is done. Outputs are bit-identical run to run.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import multiprocessing
import os
import shutil
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from pipeline.errors import UserError
from pipeline.images import decode_rgb, resize_square
from pipeline.params import SPLITS, TfrecordsParams, load_params

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TfrecordsReport:
    counts: dict[str, dict[str, int]]  # split -> class -> images
    shards: dict[str, int]
    bytes: int


@dataclass(frozen=True)
class _Job:
    path: Path
    size: int
    policy: str
    encoding: str
    quality: int


def prepare(job: _Job) -> bytes:
    """One image as the encoded square the records hold; raises UserError naming the file."""
    try:
        data = job.path.read_bytes()
    except OSError as err:
        raise UserError(f"{job.path}: cannot read ({err.strerror or err}); restore data/raw "
                        "with `dvc checkout` or rerun the scrape stage") from None
    try:
        square = resize_square(decode_rgb(data), job.size, job.policy)
    except (OSError, SyntaxError, ValueError) as err:
        raise UserError(f"{job.path}: no longer decodes ({err}); rerun the clean stage") from None
    buf = io.BytesIO()
    if job.encoding == "png":
        square.save(buf, "PNG", compress_level=6)
    else:
        square.save(buf, "JPEG", quality=job.quality)
    return buf.getvalue()


def _prepared(jobs: list[_Job], workers: int) -> Iterator[bytes]:
    bar = dict(total=len(jobs), desc="tfrecords", unit="img", disable=None)
    if workers == 1 or len(jobs) < 64:
        yield from tqdm(map(prepare, jobs), **bar)
        return
    # Spawned, not forked: this process has TensorFlow's threads running by now.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield from tqdm(pool.map(prepare, jobs, chunksize=16), **bar)


def read_split(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        raise UserError(f"{path}: not found; run the split stage first (dvc repro split)")
    try:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        return [{k: str(r[k]) for k in ("file", "label", "sha256", "split")} for r in rows]
    except (ValueError, KeyError) as err:
        raise UserError(f"{path}: not a split file ({err}); rerun the split stage") from None


def tfrecords(split_path: Path, raw_dir: Path, out_dir: Path,
              params: TfrecordsParams) -> TfrecordsReport:
    """Write ``out_dir/<split>-NNNNN-of-NNNNN.tfrecord`` shards and ``meta.json``."""
    from pipeline import features  # TensorFlow loads only when records are written

    rows = read_split(split_path)
    class_names = sorted({r["label"] for r in rows})
    ordered = sorted(rows, key=lambda r: (SPLITS.index(r["split"]), r["sha256"], r["label"]))
    jobs = [_Job(raw_dir / r["file"], params.image_size, params.resize, params.encoding,
                 params.jpeg_quality) for r in ordered]
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shards: dict[str, int] = {}
    total_bytes = 0
    encoded = _prepared(jobs, params.workers or os.cpu_count() or 1)
    for split_name in SPLITS:
        members = [r for r in ordered if r["split"] == split_name]
        count = max(1, math.ceil(len(members) / params.shard_size))
        shards[split_name] = count
        for index in range(count):
            name = features.shard_name(split_name, index, count)
            partial = tmp / f".{name}.partial"
            with features.tf.io.TFRecordWriter(str(partial)) as writer:
                for row in members[index * params.shard_size:(index + 1) * params.shard_size]:
                    writer.write(features.to_example(next(encoded), class_names.index(row["label"]),
                                                     row["sha256"]))
            os.replace(partial, tmp / name)
            total_bytes += (tmp / name).stat().st_size
    counts = {s: dict(sorted(Counter(r["label"] for r in rows if r["split"] == s).items()))
              for s in SPLITS}
    meta = {"image_size": params.image_size, "channels": 3, "class_names": class_names,
            "counts": counts, "shards": shards, "encoding": params.encoding,
            "resize": params.resize, "pixels": features.PIXELS}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return TfrecordsReport(counts=counts, shards=shards, bytes=total_bytes)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--split", type=Path, default=Path("data/split/split.jsonl"))
    parser.add_argument("--raw", type=Path, default=Path("data/raw"))
    parser.add_argument("--out", type=Path, default=Path("data/tfrecords"))


def run(args: argparse.Namespace) -> None:
    report = tfrecords(args.split, args.raw, args.out, load_params(args.params).tfrecords)
    logger.info("tfrecords: %s in %s shards (%.1f MB) in %s", report.counts, report.shards,
                report.bytes / 1e6, args.out)
    logger.debug("%s", asdict(report))
