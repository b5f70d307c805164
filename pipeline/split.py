"""The split stage: train/val/test by a hash of each near-duplicate group and the seed.

A group's split depends only on its id (its earliest member's sha256) and
``split.seed``, so (a) no group straddles two splits and (b) an image keeps its
split when new images arrive, keeping test sets comparable across retrains.
Every class is cut by the same fractions (stratified in expectation); the
report gives the realised counts and fractions per class.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.errors import UserError
from pipeline.params import SPLITS, SplitParams, load_params

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitReport:
    counts: dict[str, dict[str, int]]  # split -> class -> images
    fractions: dict[str, dict[str, float]]  # class -> split -> realised share


def assign(group: str, params: SplitParams) -> str:
    """The split of a near-duplicate group: a uniform number from a hash, cut by fractions."""
    digest = hashlib.sha256(f"{params.seed}:{group}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    edge = 0.0
    for name in SPLITS:
        edge += params.fractions[name]
        if u < edge:
            return name
    return SPLITS[-1]


def read_images(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        raise UserError(f"{path}: not found; run the clean stage first (dvc repro clean)")
    rows = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            try:
                row = json.loads(line)
                rows.append({k: row[k] for k in ("file", "label", "sha256", "group")})
            except (ValueError, KeyError) as err:
                raise UserError(f"{path}:{number}: not a clean image record ({err}); "
                                "rerun the clean stage") from None
    return rows


def split(images_path: Path, out_dir: Path, params: SplitParams) -> SplitReport:
    """Write ``out_dir/split.jsonl`` (each kept image with its split) and ``report.json``."""
    rows = read_images(images_path)
    for row in rows:
        row["split"] = assign(str(row["group"]), params)
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
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    rows.sort(key=lambda r: (str(r["split"]), str(r["label"]), str(r["sha256"])))
    (tmp / "split.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    (tmp / "report.json").write_text(json.dumps(asdict(report), indent=2, sort_keys=True) + "\n")
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=Path, default=Path("data/clean/images.jsonl"))
    parser.add_argument("--out", type=Path, default=Path("data/split"))


def run(args: argparse.Namespace) -> None:
    report = split(args.images, args.out, load_params(args.params).split)
    logger.info("split: %s; outputs in %s", report.counts, args.out)
