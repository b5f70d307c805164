"""The pretrain stage: fit the face network on the face set in data/pretrain, for warm starts.

Reads every image under ``data/pretrain`` whose folder is named as one of
``scrape.classes``: ``data/pretrain/happy/``, or FER-2013's layout as it is
(``train/happy/``, ``validation/sad/``; its other expressions' folders are left
out), by data/import's rules: regular files inside the folder only, a link that leads
out refused and named. Each becomes a square of ``pretrain.image_size`` px; files that do not
decode or are under ``pretrain.min_side`` are left out and counted. The faces
are split into train, val and test by a hash of their perceptual hash, so a
face and its copies land in the same split, and the network of
``pretrain.train`` is fitted as the train stage fits (early stopping on val,
resume after a crash). Writes ``models/pretrain/model.keras`` (what
``train.init_from: pretrain`` starts from), ``reports/pretrain/train/`` (its
history) and ``reports/pretrain/metrics.json``: held-out test accuracy and ROC
AUC with their bootstrap intervals. With no face set it writes a note instead of
a model and trains nothing, at no cost.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import shutil
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from pipeline.config.evaluate import EvaluateParams
from pipeline.config.loader import load_sections
from pipeline.config.pretrain import PretrainParams, ScrapeClasses
from pipeline.contracts import features
from pipeline.contracts.export import FACE_SET
from pipeline.contracts.split import SPLITS, split_of
from pipeline.runtime.entry import main
from pipeline.runtime.errors import UserError
from pipeline.runtime.files import write_atomic
from pipeline.runtime.folders import check_folder, files_within
from pipeline.runtime.outputs import replacing_dir, write_metrics
from pipeline.runtime.workers import parallel_map

logger = logging.getLogger(__name__)
NOTE = "README.txt"  # what the outputs hold when there is no face set


@dataclass(frozen=True)
class FaceJob:
    """One face file and the square the records want of it."""

    path: Path
    label: str
    size: int
    min_side: int
    quality: int


def face_files(folder: Path, class_names: list[str]) -> tuple[list[tuple[Path, str]], int]:
    """Every file under ``folder`` whose parent folder is named as a class, in a stable order,
    read by data/import's rules (:mod:`pipeline.runtime.folders`); and how many links out of
    the folder were refused, each said in one line."""
    if not folder.is_dir():
        return [], 0
    check_folder(folder)  # what DVC could not hash, named, when the stage runs on its own
    files, refused = [], 0
    for path, readable in files_within(folder, folder):
        if not readable:
            refused += 1
            logger.warning("pretrain: not read (a link out of %s): %s", folder, path)
        elif path.parent.name in class_names:
            files.append((path, path.parent.name))
    return sorted(files), refused


def encoded_face(job: FaceJob) -> tuple[str, str, bytes, str] | tuple[str, str]:
    """(sha256, label, the square as JPEG, its perceptual hash) of a usable face file, or
    (path, why) for one that is not. Runs in worker processes."""
    from PIL import Image, UnidentifiedImageError

    from pipeline.vision.images import encode, square_rgb
    from pipeline.vision.near_duplicates import phash

    try:
        data = job.path.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            if min(image.size) < job.min_side:
                return str(job.path), "too_small"
        square = square_rgb(data, job.size, "pad", threads=1)
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError):
        return str(job.path), "corrupt"
    encoded = encode(square, "jpeg", job.quality)
    return (hashlib.sha256(data).hexdigest(), job.label, encoded,
            f"{phash(Image.fromarray(square)):016x}")


def _write_records(faces: list[tuple[str, str, bytes, str]], class_names: list[str],
                   params: PretrainParams, seed: int, out: Path) -> dict[str, dict[str, int]]:
    """The faces as TFRecords (one shard per split) and meta.json, as the tfrecords stage
    writes them; the counts per split and class."""
    where = {sha: split_of(group, params.fractions, seed) for sha, _, _, group in faces}
    counts = {s: dict(sorted(Counter(label for sha, label, _, _ in faces
                                     if where[sha] == s).items())) for s in SPLITS}
    for split in SPLITS:
        with features.RecordWriter(out / features.shard_name(split, 0, 1)) as writer:
            for sha, label, data, _ in faces:
                if where[sha] == split:
                    writer.write(features.to_example(data, class_names.index(label), sha))
    features.write_meta(out, features.records_meta(
        params.image_size, class_names, counts, dict.fromkeys(SPLITS, 1), "jpeg", "pad",
        {"kind": "none"}))
    return counts


def _nothing_to_pretrain(folder: Path, models: Path, reports: Path, refused: int) -> dict:
    links = (f" ({refused} links out of it refused: copy the faces in instead)"
             if refused else "")
    note = (f"No face set in {folder}{links} (a folder per class, e.g. FER-2013's train/happy "
            "and train/sad): nothing was pretrained. Put one there and run `dvc repro`.\n")
    for out in (models, reports / "train"):
        with replacing_dir(out) as tmp:
            (tmp / NOTE).write_text(note)
    metrics = {"images": 0}
    write_metrics(reports / "metrics.json", metrics)
    logger.info("pretrain: %s", note.strip().split(": nothing")[0] + ": nothing to pretrain")
    return metrics


def pretrain(folder: Path, class_names: list[str], models: Path, reports: Path,
             params: PretrainParams, evaluation: EvaluateParams, seed: int) -> dict:
    """Fit the face network on ``folder``'s faces; its held-out figures (``images`` 0: none)."""
    files, refused = face_files(folder, class_names)
    if not files:
        return _nothing_to_pretrain(folder, models, reports, refused)
    jobs = [FaceJob(p, label, params.image_size, params.min_side, params.jpeg_quality)
            for p, label in files]
    results = list(parallel_map(encoded_face, jobs, params.workers, "pretrain"))
    faces = sorted({r[0]: r for r in results if len(r) == 4}.values())  # copies once
    left_out = Counter(r[1] for r in results if len(r) == 2)
    missing = [c for c in class_names if not any(label == c for _, label, _, _ in faces)]
    if missing:
        raise UserError(f"{folder}: no usable face of class {', '.join(missing)} (left out: "
                        f"{dict(left_out) or 'none'}); add a folder of them or empty {folder}")
    records = models.parent / ".pretrain" / "records"
    shutil.rmtree(records, ignore_errors=True)
    records.mkdir(parents=True)
    counts = _write_records(faces, class_names, params, seed, records)
    logger.info("pretrain: %d faces (%s), %d files left out %s", len(faces), counts,
                sum(left_out.values()), dict(left_out))
    metrics = _fit_and_score(records, models, reports, params, evaluation, seed)
    metrics["left_out"] = dict(left_out) | ({"link_out_of_folder": refused} if refused else {})
    write_atomic(reports / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(records.parent, ignore_errors=True)
    return metrics


def _fit_and_score(records: Path, models: Path, reports: Path, params: PretrainParams,
                   evaluation: EvaluateParams, seed: int) -> dict:
    """Train as the train stage trains; the test share's figures with their intervals."""
    from pipeline.runtime.log import load_tensorflow

    load_tensorflow()  # first, so its native start-up notices go to the debug log, as in train
    from pipeline.ml.bootstrap import intervals
    from pipeline.ml.fit import train
    from pipeline.ml.model import load
    from pipeline.ml.scoring import predict_test, summary

    with replacing_dir(models) as tmp_models, replacing_dir(reports / "train") as tmp_reports:
        report = train(records, tmp_models, tmp_reports, params.train, seed)
    meta = features.read_meta(records)
    scores = predict_test(load(models / "model.keras"), records, params.image_size,
                          evaluation.batch_size)
    figures = summary(scores, meta["class_names"], evaluation.threshold)
    bounds = intervals(scores.actual, scores.probability, evaluation.threshold,
                       evaluation.bootstrap_resamples, evaluation.confidence, seed)
    return {"images": figures["images"], "accuracy": figures["accuracy"],
            "roc_auc": figures["roc_auc"], "loss": figures["loss"],
            "accuracy_interval": bounds["accuracy"], "roc_auc_interval": bounds["roc_auc"],
            "confidence": evaluation.confidence, "best_epoch": report.best_epoch,
            "counts": meta["counts"]}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--faces", type=Path, default=FACE_SET,
                        help="the face set, a folder per class (default: %(default)s)")
    parser.add_argument("--models", type=Path, default=Path("models/pretrain"))
    parser.add_argument("--reports", type=Path, default=Path("reports/pretrain"))


def run(args: argparse.Namespace) -> None:
    params = load_sections(args.params, seed=int, pretrain=PretrainParams, scrape=ScrapeClasses,
                           evaluate=EvaluateParams)
    metrics = pretrain(args.faces, sorted(params.scrape.classes), args.models, args.reports,
                       params.pretrain, params.evaluate, params.seed)
    if metrics["images"]:
        low, high = metrics["accuracy_interval"]["low"], metrics["accuracy_interval"]["high"]
        logger.info("pretrain: held-out accuracy %.3f (%.0f%% interval %.3f-%.3f) on %d faces, "
                    "ROC AUC %.3f; model in %s", metrics["accuracy"], 100 * metrics["confidence"],
                    low, high, metrics["images"], metrics["roc_auc"], args.models / "model.keras")


if __name__ == "__main__":  # as dvc.yaml runs it: under its own name, for its logger
    sys.exit(main(__spec__.name))
