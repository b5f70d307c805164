"""The suspects stage: rank every kept image for a person to review, from what the DAG knows.

Flags, each a hint for the review page (``happysad review``), never a verdict:

- ``label_issue``: confident learning (cleanlab's ``find_label_issues``) over every image
  with an out-of-sample probability: the crossval stage's out-of-fold ones for the train
  and val images, the trained model's for the test images (it never saw them);
- ``confident_mistake``: a test image the model gets wrong with at least
  ``suspects.confident_mistake`` probability for the wrong class;
- ``no_face``: the ``faces`` section's detector finds no face (pipeline.vision.faces);
- ``near_duplicates``: clean folded confirmed copies into this image's group.

The score adds each flag's weight (``suspects.weights``) and how unlikely the model finds the
image's own label (1 - its out-of-sample probability), so the worst label issues come
first. Writes ``reports/suspects/suspects.jsonl`` (every kept image, most suspect first:
sha256, class, split, file, flags, score, the probability of its class and where that came
from, group and its size) and ``report.json`` (counts per flag and class).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.config.evaluate import EvaluateParams
from pipeline.config.faces import FacesParams
from pipeline.config.loader import load_sections
from pipeline.config.suspects import SuspectsParams
from pipeline.contracts.suspects import SUSPECT_FLAGS as FLAGS
from pipeline.runtime.entry import main
from pipeline.runtime.errors import UserError
from pipeline.runtime.outputs import read_records, replacing_files, write_jsonl
from pipeline.runtime.workers import parallel_map

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Evidence:
    """What the other stages say about the kept images, by sha256."""

    rows: list[dict[str, str]]  # kept images: file, label, sha256, group, group_size
    split: dict[str, str]
    probability: dict[str, tuple[float, str]]  # p(second class), and whence: out_of_fold | test
    class_names: list[str]


def _face_job(job: tuple[Path, FacesParams]) -> bool | None:
    """Whether the image holds a face (None: it could not be read)."""
    from pipeline.vision.faces import detect
    from pipeline.vision.images import decode_rgb

    path, params = job
    try:
        image = decode_rgb(path.read_bytes(), (params.max_side, "pad"))
    except (OSError, ValueError):
        return None
    return bool(detect(np.asarray(image), params))


def _read_probabilities(oof: Path, predictions: Path) -> dict[str, tuple[float, str]]:
    from pipeline.contracts.predictions import read_oof, read_predictions

    found = {r["sha256"]: (float(r["probability"]), "out_of_fold")
             for r in (read_oof(oof) if oof.exists() else [])}
    if predictions.exists():
        found |= {sha: (p, "test") for sha, (_, p) in read_predictions(predictions).items()}
    return found


def gather(images: Path, split_file: Path, meta: Path, oof: Path, predictions: Path) -> Evidence:
    rows = read_records(images, ("file", "label", "sha256", "group", "group_size"), "clean",
                        "clean image")
    split = {r["sha256"]: r["split"] for r in read_records(split_file, ("sha256", "split"),
                                                           "split", "split record")}
    try:
        names = json.loads(meta.read_text())["class_names"]
    except (OSError, ValueError, KeyError):
        raise UserError(f"{meta}: not found or not the tfrecords stage's meta.json; run "
                        "dvc repro tfrecords") from None
    return Evidence(rows, split, _read_probabilities(oof, predictions), names)


def label_issues(labels: np.ndarray, probability: np.ndarray) -> np.ndarray:
    """Confident learning's label issues (a mask) for binary labels and p(class 1)."""
    from cleanlab.filter import find_label_issues

    if len(labels) < 10 or len(np.unique(labels)) < 2:
        return np.zeros(len(labels), bool)  # too few for per-class thresholds
    pred_probs = np.stack([1 - probability, probability], axis=1)
    return np.asarray(find_label_issues(labels, pred_probs, n_jobs=1), bool)


def _scored(evidence: Evidence, faces: list[bool | None], params: SuspectsParams,
            threshold: float) -> list[dict]:
    names, rows = evidence.class_names, evidence.rows
    known = [i for i, r in enumerate(rows) if r["sha256"] in evidence.probability]
    labels = np.array([names.index(rows[i]["label"]) for i in known], int)
    p1 = np.array([evidence.probability[rows[i]["sha256"]][0] for i in known])
    issue = dict(zip(known, label_issues(labels, p1).tolist(), strict=True))
    out = []
    for index, row in enumerate(rows):
        p, whence = evidence.probability.get(row["sha256"], (None, "none"))
        second = names.index(row["label"]) == 1
        own = None if p is None else (p if second else 1 - p)  # p(its own class)
        wrong = p is not None and (p >= threshold) != second
        flags = [flag for flag, on in (
            ("label_issue", issue.get(index, False)),
            ("confident_mistake", whence == "test" and wrong and own is not None
             and 1 - own >= params.confident_mistake),
            ("no_face", faces[index] is False),
            ("near_duplicates", int(row["group_size"]) > 1)) if on]
        score = sum(params.weights[f] for f in flags) + (0.0 if own is None else 1 - own)
        out.append({"sha256": row["sha256"], "class": row["label"], "file": row["file"],
                    "split": evidence.split.get(row["sha256"], ""), "flags": flags,
                    "score": round(score, 6), "probability_of_class": None if own is None
                    else round(own, 6), "probability_from": whence, "group": row["group"],
                    "group_size": int(row["group_size"])})
    return sorted(out, key=lambda r: (-r["score"], r["sha256"]))


DETECTORS = {"haar": "OpenCV Haar cascades", "mtcnn": "MTCNN (the mtcnn package)",
             "mtcnn_then_haar": "MTCNN, then OpenCV Haar cascades where it finds none"}


def _report(scored: list[dict], class_names: list[str], detector: str) -> dict:
    flags = {flag: {name: sum(1 for r in scored if flag in r["flags"] and r["class"] == name)
                    for name in class_names} for flag in FLAGS}
    return {"images": len(scored), "flags": flags,
            "flagged": sum(1 for r in scored if r["flags"]),
            "probability_from": dict(Counter(r["probability_from"] for r in scored)),
            "method": {"label_issue": "cleanlab.filter.find_label_issues (prune_by_noise_rate) "
                       "on out-of-sample probabilities", "no_face": DETECTORS[detector]}}


def suspects(evidence: Evidence, raw: Path, out: Path, params: SuspectsParams,
             faces: FacesParams, threshold: float) -> dict:
    """Score every kept image and write ``suspects.jsonl`` and ``report.json`` to ``out``."""
    found = list(parallel_map(_face_job, [(raw / r["file"], faces) for r in evidence.rows],
                              params.workers, "faces"))
    scored = _scored(evidence, found, params, threshold)
    report = _report(scored, evidence.class_names, faces.detector)
    with replacing_files(out) as tmp:
        write_jsonl(tmp / "suspects.jsonl", scored)
        (tmp / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=Path, default=Path("data/clean/images.jsonl"))
    parser.add_argument("--split", type=Path, default=Path("data/split/split.jsonl"))
    parser.add_argument("--meta", type=Path, default=Path("data/tfrecords/meta.json"))
    parser.add_argument("--oof", type=Path, default=Path("reports/crossval/oof.csv"))
    parser.add_argument("--predictions", type=Path, default=Path("reports/evaluate/predictions.csv"))
    parser.add_argument("--raw", type=Path, default=Path("data/raw"))
    parser.add_argument("--out", type=Path, default=Path("reports/suspects"))


def run(args: argparse.Namespace) -> None:
    params = load_sections(args.params, suspects=SuspectsParams, faces=FacesParams,
                           evaluate=EvaluateParams)
    evidence = gather(args.images, args.split, args.meta, args.oof, args.predictions)
    report = suspects(evidence, args.raw, args.out, params.suspects, params.faces,
                      params.evaluate.threshold)
    counts = {flag: sum(by_class.values()) for flag, by_class in report["flags"].items()}
    logger.info("suspects: %d of %d kept images flagged %s; probabilities %s%s; ranked in %s",
                report["flagged"], report["images"], counts, report["probability_from"],
                "" if report["probability_from"].get("out_of_fold") else
                " (no label issues outside the test split: set crossval.folds for out-of-fold "
                "probabilities)", args.out / "suspects.jsonl")


if __name__ == "__main__":  # as dvc.yaml runs it: under its own name, for its logger
    sys.exit(main(__spec__.name))
