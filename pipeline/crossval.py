"""The crossval stage: grouped, stratified k-fold cross-validation on the train and val images.

For sets too small for one split to say much (a few hundred images, where one
test split's accuracy swings by +-0.1). The non-test images are cut into
``crossval.folds`` folds: whole near-duplicate groups, each class spread evenly.
Fold i's model trains on the other folds, early-stopping on a val share of them
(``split.fractions``' val against train, so it learns as the main model does),
and predicts fold i, which it never saw. The test split is never read.

Writes ``reports/crossval/``: ``metrics.json`` (accuracy, ROC AUC and loss as
means over folds, and accuracy's sd: the columns `dvc metrics show` has room
for), ``details.json`` (every metric's mean and sd over folds, every fold, the
pooled out-of-fold figures with their bootstrap intervals), ``oof.csv`` (sha256, label, probability,
fold: one row per image, each predicted by the one model that did not train on
it) and ``plots/folds.png``. An interrupted run keeps its finished folds
(``models/.crossval/``) and goes on from the next. ``crossval.folds: 0`` writes
the files empty, at no cost.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import json
import logging
import shutil
import statistics
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import UserError
from pipeline.log import load_tensorflow
from pipeline.params import HEADLINE, Params, load_params
from pipeline.stage_io import read_records, replacing_files, write_metrics
from pipeline.train import _clock as clock  # one format for every progress line

logger = logging.getLogger(__name__)
OOF_HEADER = ["sha256", "label", "probability", "fold"]
SHOWN = ("accuracy", "roc_auc", "loss")  # in metrics.json, as means over folds


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

    from pipeline import features
    from pipeline.features import RecordWriter

    dest.mkdir(parents=True, exist_ok=True)
    names = meta["class_names"]
    files = [f for split in ("train", "val") for f in features.shard_files(records, split)]
    spec = {"sha256": tf.io.FixedLenFeature([], tf.string),
            "label": tf.io.FixedLenFeature([], tf.int64)}
    counts: dict[str, Counter] = {split: Counter() for split in ("train", "val", "test")}
    with contextlib.ExitStack() as stack:
        writers = {split: stack.enter_context(RecordWriter(dest / features.shard_name(split, 0, 1)))
                   for split in counts}
        for serialized in tf.data.TFRecordDataset(files):
            example = tf.io.parse_single_example(serialized, spec)
            sha = example["sha256"].numpy().decode()
            split = "test" if sha in fold.held_out else "val" if sha in fold.val else "train"
            writers[split].write(serialized.numpy())
            counts[split][names[int(example["label"])]] += 1
    if (sum(counts["test"].values()), sum(counts["val"].values())) != (len(fold.held_out),
                                                                       len(fold.val)):
        raise UserError(f"{records}: its train and val shards do not hold the images the split "
                        "lists; rerun the tfrecords stage (dvc repro tfrecords)")
    counted = {split: {n: c.get(n, 0) for n in names} for split, c in counts.items()}
    (dest / "meta.json").write_text(json.dumps({**meta, "counts": counted, "shards": {
        split: 1 for split in counts}}, indent=2, sort_keys=True) + "\n")


def _run_fold(records: Path, meta: dict, fold: Fold, work: Path, params: Params) -> dict:
    """Train fold ``work.name``'s model and predict its held-out images; kept in
    ``work/scores.json`` so a rerun after a crash skips the fold."""
    import keras

    from pipeline.evaluate import predict_test
    from pipeline.model import load
    from pipeline.train import train

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
              "gap": report.gap, "images": json.loads((work / "records" / "meta.json")
                                                      .read_text())["counts"]}
    done.write_text(json.dumps(result))
    for heavy in ("records", "model", "reports"):
        shutil.rmtree(work / heavy, ignore_errors=True)
    return result


def val_share(params: Params) -> float:
    """The share of a fold model's training images it early-stops on: val against train in
    ``split.fractions``, so each fold's model learns as the main model does."""
    fractions = params.split.fractions
    return fractions["val"] / (fractions["train"] + fractions["val"])


def _work_key(rows: list[dict[str, str]], meta: dict, params: Params, folds: int) -> str:
    """Finished folds are reused only for the same images, groups, params and folds, and the
    same warm-start model (its bytes, not only its path: it may have been trained again)."""
    start = Path(params.train.init_from) if params.train.init_from else None
    start_digest = hashlib.sha256(start.read_bytes()).hexdigest() if start and start.is_file() else ""
    text = json.dumps([sorted((r["sha256"], r["group"], r["label"]) for r in rows), meta,
                       params.train.model_dump(), params.split.fractions, params.seed, folds,
                       params.evaluate.batch_size, start_digest], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cross_validate(records: Path, split_file: Path, work: Path, params: Params,
                   folds: int) -> tuple[list[dict], Path]:
    """Every fold's result (its held-out images' probabilities, its training figures), and
    the folder that holds them (removed by the caller once the reports are written)."""
    from pipeline import features

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
        eta = trained_s / trained * (folds - number) if trained else 0.0
        logger.info("fold %d/%d: accuracy %.3f on its %d held-out images (%s training so far, "
                    "ETA %s)", number, folds, accuracy, len(fold.held_out), clock(trained_s),
                    clock(eta))
    return results, place


def summarise(results: list[dict], class_names: list[str], params: Params) -> dict:
    """Per fold and pooled figures, with each metric's mean and sd over folds and the pooled
    figures' bootstrap intervals."""
    from pipeline import bootstrap
    from pipeline.evaluate import Scores, summary

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


def _write_oof(path: Path, results: list[dict], class_names: list[str]) -> None:
    rows = sorted((sha, class_names[actual], f"{prob:.6f}", number)
                  for number, r in enumerate(results, start=1)
                  for sha, actual, prob in zip(r["sha256"], r["actual"], r["probability"],
                                               strict=True))
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(OOF_HEADER)
        writer.writerows(rows)


def read_oof(path: Path) -> list[dict[str, str]]:
    """``oof.csv`` as written here: one dict per image, keys ``OOF_HEADER``."""
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def write_reports(out: Path, results: list[dict], class_names: list[str],
                  params: Params) -> dict | None:
    """``metrics.json``, ``details.json``, ``oof.csv`` and ``plots/`` in ``out``; with no
    results (crossval off) the same files, empty. Returns the details."""
    from pipeline import plots

    details = summarise(results, class_names, params) if results else None
    with replacing_files(out) as tmp:
        (tmp / "plots").mkdir()
        if details is None:
            write_metrics(tmp / "metrics.json", {"images": 0})
            # a file in the plots folder, or DVC warns on every run that it is empty
            (tmp / "plots" / "README.txt").write_text(
                "Cross-validation is off (crossval.folds: 0), so there is no plot of its folds.\n")
            (tmp / "details.json").write_text(json.dumps({"folds": 0, "note": (
                "off: set crossval.folds in params.yaml (5 is usual) to cross-validate")}) + "\n")
        else:
            # Means over folds in evaluate's columns of `dvc metrics show`, and one sd beside
            # them: the table stays readable; every sd and the pooled figures are in details.
            write_metrics(tmp / "metrics.json", {
                **{k: details["mean"][k] for k in SHOWN}, "accuracy_sd": details["sd"]["accuracy"],
                "images": details["images"]})
            (tmp / "details.json").write_text(json.dumps(details, indent=2, sort_keys=True) + "\n")
            plots.folds(details, tmp / "plots" / "folds.png")
        _write_oof(tmp / "oof.csv", results, class_names)
        shutil.rmtree(out / "plots", ignore_errors=True)  # a folder: replaced whole
    return details


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--records", type=Path, default=Path("data/tfrecords"))
    parser.add_argument("--split", type=Path, default=Path("data/split/split.jsonl"))
    parser.add_argument("--work", type=Path, default=Path("models/.crossval"),
                        help="finished folds, kept until the reports are written")
    parser.add_argument("--out", type=Path, default=Path("reports/crossval"))


def run(args: argparse.Namespace) -> None:
    params = load_params(args.params)
    folds = params.crossval.folds
    if not folds:
        write_reports(args.out, [], ["", ""], params)
        logger.info("crossval: off (crossval.folds is 0); on a few hundred images set it to 5 "
                    "for figures one split cannot give; empty reports in %s", args.out)
        return
    from pipeline import features

    load_tensorflow()  # its native start-up notices go to the debug log
    class_names = features.read_meta(args.records)["class_names"]
    results, place = cross_validate(args.records, args.split, args.work, params, folds)
    details = write_reports(args.out, results, class_names, params)
    shutil.rmtree(place, ignore_errors=True)  # the reports hold it all now
    assert details is not None
    pooled, bound = details["pooled"], details["pooled"]["intervals"]["accuracy"]
    logger.info("crossval: %d folds, %d images: accuracy %.3f +- %.3f over folds (pooled %.3f, "
                "%.0f%% interval %.3f-%.3f), ROC AUC %.3f +- %.3f; reports in %s", folds,
                details["images"], details["mean"]["accuracy"], details["sd"]["accuracy"],
                pooled["accuracy"], 100 * params.evaluate.confidence, bound["low"], bound["high"],
                details["mean"]["roc_auc"], details["sd"]["roc_auc"], args.out)
