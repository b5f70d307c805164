"""Honest numbers on the dev web set: one test split per seed against grouped k-fold crossval.

The 906 real web-scraped images of ``../shared/data/webfaces-happysad-dev.tar``,
imported through the folder source and cleaned with the repository's params:

1. What clean keeps, and why the others went.
2. For each of ``--seeds`` split seeds: train, then test accuracy with its 95%
   bootstrap interval (``evaluate``), on that seed's own test split.
3. ``--folds``-fold grouped crossval of the non-test images of split seed 1337
   (params.yaml's), for each early-stopping variant (``--variants``): mean +- sd
   over folds, pooled out-of-fold accuracy with its interval, the kept epochs, and
   the run's time.

Run: ``uv run python -m bench.crossval [--work DIR] [--seeds 5] [--folds 5]``; with
``--work`` finished steps are kept in ``DIR/results.json`` and not run again.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench import print_table
from pipeline.config.params import Params, load_params

REPO = Path(__file__).resolve().parents[1]
DEV_TAR = REPO.parent / "shared" / "data" / "webfaces-happysad-dev.tar"
VARIANTS = {  # early stopping on a val split of a few dozen images: what survives its noise
    "default": {},
    "smoothed": {"val_loss_smoothing": 0.6},
    "min_epochs_10": {"min_epochs": 10},
}


@contextmanager
def kept_results(work: Path | None) -> Iterator[tuple[Path, Path, dict]]:
    """TensorFlow loaded quietly, and the work folder (``work``, or a temporary one), the file
    its finished steps are kept in, and what they left there."""
    from pipeline.runtime.log import load_tensorflow, setup_logging

    setup_logging(False)
    load_tensorflow()
    with tempfile.TemporaryDirectory() as tmp:
        folder = work or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        store = folder / "results.json"
        yield folder, store, json.loads(store.read_text()) if store.exists() else {}


def cv_summary(results: list[dict], class_names: list[str], params: Params, started: float) -> dict:
    """What a crossval row shows, from cross_validate's per-fold results."""
    from pipeline.ml.crossval import summarise

    details = summarise(results, class_names, params)
    return {"mean": details["mean"], "sd": details["sd"], "pooled_accuracy":
            details["pooled"]["accuracy"], "pooled_interval":
            details["pooled"]["intervals"]["accuracy"], "images": details["images"],
            "best_epochs": [f["best_epoch"] for f in details["per_fold"]],
            "fold_accuracy": [f["accuracy"] for f in details["per_fold"]],
            "seconds": round(time.perf_counter() - started, 1)}


def _step(results: dict, path: Path, name: str, run) -> dict:
    """``results[name]``, computed once and kept in ``path``."""
    if name not in results:
        results[name] = run()
        path.write_text(json.dumps(results, indent=2, sort_keys=True))
    return results[name]


def _clean(tar: Path, work: Path, params: Params) -> dict:
    from pipeline.scrape.folder import import_folder
    from pipeline.stages.clean import clean

    with tarfile.open(tar) as archive:
        archive.extractall(work / "dev", filter="data")
    labels = sorted(p.name for p in (work / "dev").iterdir() if p.is_dir())
    import_folder("dev", str(work / "dev"), labels, work / "raw", max_images=10**9,
                  max_bytes=2**30, progress_every_s=1e9)
    clean(work / "raw", work / "clean", params.clean)
    return json.loads((work / "clean" / "report.json").read_text())


def _records(work: Path, params: Params, seed: int) -> Path:
    from pipeline.config.split import SplitParams
    from pipeline.stages.split import split
    from pipeline.stages.tfrecords import tfrecords

    out = work / f"seed-{seed}"
    split(work / "clean" / "images.jsonl", out / "split",
          SplitParams(seed=seed, fractions=params.split.fractions))
    tfrecords(out / "split" / "split.jsonl", work / "raw", out / "records", params.tfrecords)
    return out


def _one_split(work: Path, params: Params, seed: int) -> dict:
    import keras

    from pipeline.ml.fit import train
    from pipeline.stages.evaluate import evaluate

    out = _records(work, params, seed)
    started = time.perf_counter()
    report = train(out / "records", out / "model", out / "train", params.train, params.seed)
    metrics = evaluate(out / "model" / "model.keras", out / "records", out / "train",
                       out / "evaluate", params.evaluate, params.seed)
    keras.backend.clear_session()
    return {"accuracy": metrics["accuracy"], "interval": metrics["intervals"]["accuracy"],
            "roc_auc": metrics["roc_auc"], "images": metrics["images"],
            "best_epoch": report.best_epoch, "epochs_run": report.epochs_run,
            "seconds": round(time.perf_counter() - started, 1)}


def _crossval(work: Path, params: Params, folds: int, changes: dict) -> dict:
    from pipeline.ml.crossval import cross_validate

    out = work / f"seed-{params.split.seed}"
    if not (out / "records" / "meta.json").exists():
        _records(work, params, params.split.seed)
    varied = params.model_copy(update={"train": params.train.model_copy(update=changes)})
    started = time.perf_counter()
    results, _ = cross_validate(out / "records", out / "split" / "split.jsonl", work / "cv",
                                varied, folds)
    meta = json.loads((out / "records" / "meta.json").read_text())
    return cv_summary(results, meta["class_names"], varied, started)


def _clean_rows(report: dict) -> list[tuple[str, str, str]]:
    rows = [("kept", str(sum(report["kept"].values())), json.dumps(report["kept"]))]
    for reason, count in sorted(report["rejected"].items(), key=lambda kv: -kv[1]):
        rows.append((f"rejected: {reason}", str(count), json.dumps(
            {c: n.get(reason, 0) for c, n in report["rejected_by_class"].items()})))
    return rows


def _split_rows(splits: dict[str, dict]) -> list[tuple[str, str, str]]:
    rows = [(f"split seed {seed}: test accuracy", f"{r['accuracy']:.3f}",
             f"95% interval {r['interval']['low']:.3f}-{r['interval']['high']:.3f} on "
             f"{r['images']} images; ROC AUC {r['roc_auc']:.3f}; best epoch {r['best_epoch']} of "
             f"{r['epochs_run']}; {r['seconds']:.0f} s") for seed, r in splits.items()]
    accuracies = [r["accuracy"] for r in splits.values()]
    mean = statistics.fmean(accuracies)
    covered = sum(r["interval"]["low"] <= mean <= r["interval"]["high"] for r in splits.values())
    rows.append(("seeds: mean +- sd", f"{mean:.3f} +- {statistics.stdev(accuracies):.3f}",
                 f"range {min(accuracies):.3f}-{max(accuracies):.3f}; {covered} of "
                 f"{len(splits)} seeds' intervals hold the seeds' mean"))
    return rows


def _cv_rows(cv: dict[str, dict], folds: int) -> list[tuple[str, str, str]]:
    return [(f"{folds}-fold crossval, {name}: accuracy",
             f"{r['mean']['accuracy']:.3f} +- {r['sd']['accuracy']:.3f}",
             f"pooled {r['pooled_accuracy']:.3f} ({r['pooled_interval']['low']:.3f}-"
             f"{r['pooled_interval']['high']:.3f}) on {r['images']} images; ROC AUC "
             f"{r['mean']['roc_auc']:.3f} +- {r['sd']['roc_auc']:.3f}; loss {r['mean']['loss']:.3f}; "
             f"best epochs {r['best_epochs']}; {r['seconds'] / 60:.1f} min")
            for name, r in cv.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.crossval", description=__doc__.splitlines()[0])
    parser.add_argument("--tar", type=Path, default=DEV_TAR)
    parser.add_argument("--work", type=Path, help="keep finished steps here (default: a temp folder)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="of " + ", ".join(VARIANTS))
    args = parser.parse_args(argv)
    if not args.tar.exists():
        print(f"bench.crossval: {args.tar} not found; skipped")  # noqa: T201
        return 0
    params = load_params(REPO / "params.yaml")
    with kept_results(args.work) as (work, store, results):
        report = _step(results, store, "clean", lambda: _clean(args.tar, work, params))
        print_table("dev web set: clean", _clean_rows(report))
        seeds = [params.split.seed + 1000 * n for n in range(args.seeds)]
        splits = {str(s): _step(results, store, f"split-{s}", lambda s=s: _one_split(work, params, s))
                  for s in seeds}
        print_table("dev web set: one split per seed (default params)", _split_rows(splits))
        cv = {name: _step(results, store, f"cv-{args.folds}-{name}", lambda n=name: _crossval(
            work, params, args.folds, VARIANTS[n])) for name in args.variants.split(",")}
        print_table("dev web set: grouped crossval of split seed "
                    f"{params.split.seed}'s train and val images", _cv_rows(cv, args.folds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
