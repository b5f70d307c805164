"""The split stage: train/val/test by a hash of each near-duplicate group and the seed.

A group's split depends only on its id (its earliest member's sha256) and
``split.seed``, so (a) no group straddles two splits and (b) an image keeps its
split when new images arrive, keeping test sets comparable across retrains.
Every class is cut by the same fractions (stratified in expectation); the
report gives the realised counts and fractions per class.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.config.loader import load_sections
from pipeline.config.split import SplitParams
from pipeline.contracts.split import SPLITS, split_of
from pipeline.runtime.entry import main
from pipeline.runtime.errors import UserError
from pipeline.runtime.outputs import read_records, replacing_files, write_jsonl

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitReport:
    counts: dict[str, dict[str, int]]  # split -> class -> images
    fractions: dict[str, dict[str, float]]  # class -> split -> realised share


def split(images_path: Path, out_dir: Path, params: SplitParams) -> SplitReport:
    """Write ``out_dir/split.jsonl`` (each kept image with its split) and ``report.json``."""
    rows = read_records(images_path, ("file", "label", "sha256", "group"), "clean",
                        "clean image")
    for row in rows:
        row["split"] = split_of(row["group"], params.fractions, params.seed)
    counts = {name: dict(sorted(Counter(str(r["label"]) for r in rows if r["split"] == name).items()))
              for name in SPLITS}
    labels = sorted({str(r["label"]) for r in rows})
    for name in SPLITS:
        for label in labels:
            if not counts[name].get(label):
                raise UserError(f"{images_path}: split {name!r} has no {label!r} image "
                                f"({len(rows)} images in all); gather more data or change "
                                "split.fractions")
    totals = Counter(str(r["label"]) for r in rows)
    fractions = {label: {name: round(counts[name].get(label, 0) / totals[label], 4)
                         for name in SPLITS} for label in labels}
    report = SplitReport(counts=counts, fractions=fractions)
    rows.sort(key=lambda r: (r["split"], r["label"], r["sha256"]))
    with replacing_files(out_dir) as tmp:
        write_jsonl(tmp / "split.jsonl", rows)
        (tmp / "report.json").write_text(json.dumps(asdict(report), indent=2, sort_keys=True) + "\n")
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=Path, default=Path("data/clean/images.jsonl"))
    parser.add_argument("--out", type=Path, default=Path("data/split"))


def run(args: argparse.Namespace) -> None:
    report = split(args.images, args.out, load_sections(args.params, split=SplitParams).split)
    logger.info("split: %s; outputs in %s", report.counts, args.out)


if __name__ == "__main__":  # as dvc.yaml runs it: under its own name, for its logger
    sys.exit(main(__spec__.name))
