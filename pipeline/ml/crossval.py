"""Grouped k-fold cross-validation: whole near-duplicate groups per fold, stratified by class;
each fold's model trained as the train stage trains and scored on its held-out fold."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import statistics
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from pipeline.contracts import features
from pipeline.contracts.export import start_model
from pipeline.contracts.metrics import HEADLINE
from pipeline.runtime.errors import UserError
from pipeline.runtime.log import clock
from pipeline.runtime.outputs import read_records

if TYPE_CHECKING:  # annotations only: the sections come from the caller
    from pipeline.config.evaluate import EvaluateParams
    from pipeline.config.split import SplitParams
    from pipeline.config.train import TrainParams

logger = logging.getLogger(__name__)


class Settings(Protocol):
    """The sections cross-validation reads: the crossval stage's, or a tuning trial's whole params."""

    seed: int
    train: TrainParams
    split: SplitParams
    evaluate: EvaluateParams


@dataclass(frozen=True)
class Fold:
    """One fold's images by sha256: what its model predicts, and its early-stopping share."""

    held_out: frozenset[str]
    val: frozenset[str]


def _rank(seed: int, group: str) -> bytes:
    return hashlib.sha256(f"{seed}:{group}".encode()).digest()


def _groups(rows: list[dict[str, str]]) -> tuple[dict[str, list[str]], dict[str, str]]:
    """sha256s per group, and each group's label (its members share one: clean keeps no
    group across classes; the most common one, were it otherwise)."""
    members: dict[str, list[str]] = defaultdict(list)
    labels: dict[str, Counter] = defaultdict(Counter)
    for row in rows:
        members[row["group"]].append(row["sha256"])
        labels[row["group"]][row["label"]] += 1
    return dict(members), {g: sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
                           for g, c in labels.items()}


def assign_folds(rows: list[dict[str, str]], folds: int, seed: int) -> dict[str, int]:
    """Each group's fold: groups largest first (ties in a seeded order), each to the fold with
    fewest images of its class, then fewest images: no group is split, and every fold gets
    each class in the same share to within one group."""
    members, label = _groups(rows)
    per_class = Counter(label.values())
    short = {name: n for name, n in per_class.items() if n < folds + 1}
    if short or len(per_class) < 2:
        raise UserError(f"crossval.folds {folds} needs at least {folds + 1} near-duplicate groups "
                        f"of each of two classes; found {dict(per_class)}; lower crossval.folds "
                        "in params.yaml or gather more images")
    held: list[Counter] = [Counter() for _ in range(folds)]
    size = [0] * folds
    fold_of = {}
    for group in sorted(members, key=lambda g: (-len(members[g]), _rank(seed, g))):
        fold = min(range(folds), key=lambda f: (held[f][label[group]], size[f], f))
        fold_of[group] = fold
        held[fold][label[group]] += len(members[group])
        size[fold] += len(members[group])
    return fold_of


def _val_groups(groups: list[str], members: dict[str, list[str]], label: dict[str, str],
                share: float, seed: int) -> set[str]:
    """Per class, groups in a seeded order until they hold ``share`` of its images (one at least)."""
    chosen: set[str] = set()
    for name in sorted(set(label[g] for g in groups)):
        own = sorted((g for g in groups if label[g] == name), key=lambda g: _rank(seed + 1, g))
        target, taken = share * sum(len(members[g]) for g in own), 0
        for group in own[:-1]:  # the last is never taken: some of each class stays to train on
            if taken and taken >= target:
                break
            chosen.add(group)
            taken += len(members[group])
    return chosen


def plan(rows: list[dict[str, str]], folds: int, val_share: float, seed: int) -> list[Fold]:
    """The folds of ``rows`` (the non-test images: sha256, label, group)."""
    fold_of = assign_folds(rows, folds, seed)
    members, label = _groups(rows)
    out = []
    for fold in range(folds):
        training = [g for g in members if fold_of[g] != fold]
        val = _val_groups(training, members, label, val_share, seed + fold)
        out.append(Fold(frozenset(s for g in members if fold_of[g] == fold for s in members[g]),
                        frozenset(s for g in val for s in members[g])))
    return out


def _write_fold_records(records: Path, meta: dict, fold: Fold, dest: Path) -> None:
    """``dest`` as a records folder: the fold's own images as its test split, its val share as
    val, the rest as train (bytes copied from ``records``' train and val shards)."""
    import tensorflow as tf

    from pipeline.contracts.features import RecordWriter

    dest.mkdir(parents=True, exist_ok=True)
    names = meta["class_names"]
    files = [f for split in ("train", "val") for f in features.shard_files(records, split)]
    counts: dict[str, Counter] = {split: Counter() for split in ("train", "val", "test")}
    with contextlib.ExitStack() as stack:
        writers = {split: stack.enter_context(RecordWriter(dest / features.shard_name(split, 0, 1)))
                   for split in counts}
        for serialized in tf.data.TFRecordDataset(files):
            sha, label = features.parse_ids(serialized)
            split = "test" if sha in fold.held_out else "val" if sha in fold.val else "train"
            writers[split].write(serialized.numpy())
            counts[split][names[label]] += 1
    if (sum(counts["test"].values()), sum(counts["val"].values())) != (len(fold.held_out),
                                                                       len(fold.val)):
        raise UserError(f"{records}: its train and val shards do not hold the images the split "
                        "lists; rerun the tfrecords stage (dvc repro tfrecords)")
    counted = {split: {n: c.get(n, 0) for n in names} for split, c in counts.items()}
    features.write_meta(dest, features.part_of(meta, counted, dict.fromkeys(counts, 1)))


def _run_fold(records: Path, meta: dict, fold: Fold, work: Path, params: Settings) -> dict:
    """Train fold ``work.name``'s model and predict its held-out images; kept in
    ``work/scores.json`` so a rerun after a crash skips the fold."""
    import keras

    from pipeline.ml.fit import train
    from pipeline.ml.model import load
    from pipeline.ml.scoring import predict_test

    done = work / "scores.json"
    if done.exists():
        return json.loads(done.read_text())
    _write_fold_records(records, meta, fold, work / "records")
    report = train(work / "records", work / "model", work / "reports", params.train, params.seed)
    scores = predict_test(load(work / "model" / "model.keras"), work / "records",
                          meta["image_size"], params.evaluate.batch_size)
    keras.backend.clear_session()
    result = {"sha256": scores.sha256, "actual": scores.actual.tolist(),
              "probability": scores.probability.tolist(), "best_epoch": report.best_epoch,
              "epochs_run": report.epochs_run, "train": report.train, "val": report.val,
              "gap": report.gap, "images": features.read_meta(work / "records")["counts"]}
    done.write_text(json.dumps(result))
    for heavy in ("records", "model", "reports"):
        shutil.rmtree(work / heavy, ignore_errors=True)
    return result


def val_share(params: Settings) -> float:
    """The share of a fold model's training images it early-stops on: val against train in
    ``split.fractions``, so each fold's model learns as the main model does."""
    fractions = params.split.fractions
    return fractions["val"] / (fractions["train"] + fractions["val"])


def _work_key(rows: list[dict[str, str]], meta: dict, params: Settings, folds: int) -> str:
    """Finished folds are reused only for the same images, groups, params and folds, and the
    same warm-start model (its bytes, not only its path: it may have been trained again)."""
    start = start_model(params.train.init_from)
    start_digest = hashlib.sha256(start.read_bytes()).hexdigest() if start and start.is_file() else ""
    text = json.dumps([sorted((r["sha256"], r["group"], r["label"]) for r in rows), meta,
                       params.train.model_dump(), params.split.fractions, params.seed, folds,
                       params.evaluate.batch_size, start_digest], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cross_validate(records: Path, split_file: Path, work: Path, params: Settings,
                   folds: int) -> tuple[list[dict], Path]:
    """Every fold's result (its held-out images' probabilities, its training figures), and
    the folder that holds them (removed by the caller once the reports are written)."""
    rows = [r for r in read_records(split_file, ("sha256", "label", "group", "split"), "split",
                                    "split record") if r["split"] != "test"]
    meta = features.read_meta(records)
    folds_plan = plan(rows, folds, val_share(params), params.seed)
    place = work / f"crossval-{_work_key(rows, meta, params, folds)}"
    results: list[dict] = []
    trained_s, trained = 0.0, 0
    for number, fold in enumerate(folds_plan, start=1):
        fold_dir = place / f"fold-{number}"
        reused = (fold_dir / "scores.json").exists()
        logger.info("fold %d/%d: %s on %d images (%d of them to early-stop on), predicting %d",
                    number, folds, "finished earlier, reused" if reused else "training",
                    len(rows) - len(fold.held_out), len(fold.val), len(fold.held_out))
        started = time.perf_counter()
        results.append(_run_fold(records, meta, fold, fold_dir, params))
        if not reused:
            trained_s, trained = trained_s + time.perf_counter() - started, trained + 1
        accuracy = np.mean((np.array(results[-1]["probability"]) >= params.evaluate.threshold)
                           == np.array(results[-1]["actual"]))
        # no ETA until a fold has trained here: a reused fold's time says nothing of the rest
        timing = (f"{clock(trained_s)} training so far, ETA "
                  f"{clock(trained_s / trained * (folds - number))}" if trained
                  else "finished earlier")
        logger.info("fold %d/%d: accuracy %.3f on its %d held-out images (%s)", number, folds,
                    accuracy, len(fold.held_out), timing)
    return results, place


def summarise(results: list[dict], class_names: list[str], params: Settings) -> dict:
    """Per fold and pooled figures, with each metric's mean and sd over folds and the pooled
    figures' bootstrap intervals."""
    from pipeline.ml import bootstrap
    from pipeline.ml.scoring import Scores, summary

    threshold = params.evaluate.threshold
    per_fold = []
    for number, result in enumerate(results, start=1):
        scores = summary(Scores(result["sha256"], np.array(result["actual"], int),
                                np.array(result["probability"])), class_names, threshold)
        per_fold.append({"fold": number, "images": result["images"],
                         "best_epoch": result["best_epoch"], "epochs_run": result["epochs_run"],
                         "train_val_gap": result["gap"], **{k: scores[k] for k in HEADLINE}})
    actual = np.concatenate([np.array(r["actual"], int) for r in results])
    probability = np.concatenate([np.array(r["probability"]) for r in results])
    pooled = summary(Scores([s for r in results for s in r["sha256"]], actual, probability),
                     class_names, threshold)
    pooled["intervals"] = bootstrap.intervals(actual, probability, threshold,
                                              params.evaluate.bootstrap_resamples,
                                              params.evaluate.confidence, params.seed)
    return {"folds": len(results), "images": len(actual), "val_share": round(val_share(params), 6),
            "method": "grouped stratified k-fold: whole near-duplicate groups per fold; each "
            "fold's model early-stops on a val share of the other folds",
            "mean": {k: round(statistics.fmean(f[k] for f in per_fold), 6) for k in HEADLINE},
            "sd": {k: round(statistics.stdev(f[k] for f in per_fold), 6) for k in HEADLINE},
            "pooled": pooled, "per_fold": per_fold}
