"""One tuning trial: train with some train params changed, scored on the val split only.

(With ``tune.cv_folds``, scored by grouped k-fold cross-validation of the train and
val images instead: pooled out-of-fold figures, k trainings per trial.)

``happysad tune --records VIEW --out DIR --values JSON`` is what the tune flow
(``flows/tune.py``) runs per trial, each in its own process. Its records folder
is a train/val view of data/tfrecords (:func:`train_val_view`): the test shards
are not in it, so no trial can read them, and the search never sees a test score.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import statistics
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pipeline.config.params import Params, load_params
from pipeline.config.train import TrainParams
from pipeline.config.tune import Dimension, TuneParams
from pipeline.contracts import features
from pipeline.contracts.metrics import LOWER_IS_BETTER
from pipeline.runtime.errors import UserError
from pipeline.runtime.log import load_tensorflow

logger = logging.getLogger(__name__)

SEEN = ("train", "val")


def train_val_view(records: Path, dest: Path) -> Path:
    """``dest`` as a records folder holding only the train and val shards of ``records``."""
    meta = features.read_meta(records)
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.tfrecord"):
        old.unlink()
    for split in SEEN:
        for shard in map(Path, features.shard_files(records, split)):
            try:
                os.link(shard, dest / shard.name)  # no copy, and no path back to the original
            except OSError:
                shutil.copyfile(shard, dest / shard.name)
    features.write_meta(dest, features.part_of(
        meta, {k: v for k, v in meta["counts"].items() if k in SEEN},
        {k: v for k, v in meta.get("shards", {}).items() if k in SEEN}))
    return dest


def apply(base: TrainParams, values: dict[str, Any]) -> TrainParams:
    """``base`` with dotted train keys (``dropout``, ``augment.zoom``) set, validated."""
    data = base.model_dump()
    for key, value in values.items():
        head, _, rest = key.partition(".")
        if rest:
            data[head][rest] = value
        else:
            data[head] = value
    return TrainParams.model_validate(data)


def suggest(trial: Any, space: dict[str, Dimension], base: TrainParams) -> dict[str, Any]:
    """An Optuna trial's values for every knob of ``space``."""
    current = base.model_dump()
    values: dict[str, Any] = {}
    for key, dim in space.items():
        if dim.choices is not None:
            # Optuna stores categorical values as primitives: lists travel as JSON text.
            values[key] = json.loads(trial.suggest_categorical(
                key, [json.dumps(c) for c in dim.choices]))
            continue
        head, _, rest = key.partition(".")
        now = current[head][rest] if rest else current[head]
        assert dim.low is not None and dim.high is not None
        if isinstance(now, int) and not isinstance(now, bool) and dim.low.is_integer() \
                and dim.high.is_integer():
            values[key] = trial.suggest_int(key, int(dim.low), int(dim.high), log=dim.log)
        else:
            values[key] = trial.suggest_float(key, dim.low, dim.high, log=dim.log)
    return values


def current_values(base: TrainParams, space: dict[str, Dimension]) -> dict[str, Any]:
    """params.yaml's own values for the knobs of ``space`` (those the space can express), in
    Optuna's stored form: the search tries them first, so its best is never worse on val
    than what is there now."""
    current = base.model_dump()
    values: dict[str, Any] = {}
    for key, dim in space.items():
        head, _, rest = key.partition(".")
        now = current[head][rest] if rest else current[head]
        if dim.choices is not None:
            if now in dim.choices:
                values[key] = json.dumps(now)
        elif dim.low is not None and dim.high is not None and dim.low <= now <= dim.high:
            values[key] = now
    return values


def decode(params: dict[str, Any], space: dict[str, Dimension]) -> dict[str, Any]:
    """An Optuna trial's stored params as train values (categoricals back from JSON)."""
    return {k: json.loads(v) if space[k].choices is not None else v for k, v in params.items()}


def create_study(settings: TuneParams, seed: int, base: TrainParams, space: dict[str, Dimension],
                 storage: str | None = None, name: str | None = None) -> Any:
    """A seeded Optuna study in ``tune.metric``'s direction (resumed when ``storage`` holds
    it). A new one gets params.yaml's own values as trial 0, so its best is never worse on
    val than what is there now; then ``tune.random_trials`` random trials, so every choice
    can be seen before TPE, which otherwise keeps proposing trial 0's choices."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=name, storage=storage, load_if_exists=storage is not None,
        direction="minimize" if settings.metric.removeprefix("val_") in LOWER_IS_BETTER
        else "maximize",
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=1 + settings.random_trials))
    if not study.trials:
        study.enqueue_trial(current_values(base, space))
    return study


def scored_on(settings: TuneParams) -> str:
    """What a trial's score is measured on, in words."""
    return (f"{settings.cv_folds}-fold out-of-fold predictions of the train and val images"
            if settings.cv_folds else "the val split")


def score(result: dict[str, Any], metric: str) -> float:
    """The trial's figure on the val split at its best epoch (with ``tune.cv_folds``: its
    pooled out-of-fold figure)."""
    return float(result["val"][metric.removeprefix("val_")])


def study_key(records: Path, train: TrainParams, space: dict[str, Dimension], seed: int,
              metric: str, cv_folds: int = 0) -> str:
    """A search is resumed only over the same data, base params, space and scoring."""
    scoring = [metric, cv_folds] if cv_folds else metric  # the keys of searches before cv_folds
    text = json.dumps([features.meta_text(records), train.model_dump(),
                       {k: v.model_dump() for k, v in space.items()}, seed, scoring], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def params_change(values: dict[str, Any]) -> str:
    """The best values as a params.yaml fragment, ready to merge into the train section."""
    import yaml

    train: dict[str, Any] = {}
    for key, value in sorted(values.items()):
        head, _, rest = key.partition(".")
        if rest:
            train.setdefault(head, {})[rest] = value
        else:
            train[head] = value
    return yaml.safe_dump({"train": train}, sort_keys=True, default_flow_style=None)


def set_arguments(values: dict[str, Any]) -> list[str]:
    """``-S train.key=value`` arguments for ``dvc exp run``, values in YAML flow style."""
    return [arg for key, value in sorted(values.items())
            for arg in ("-S", f"train.{key}={json.dumps(value)}")]


def run_trial(records: Path, out: Path, params: Params, values: dict[str, Any],
              split_file: Path) -> dict[str, Any]:
    """Train one trial into ``out`` (or, with ``tune.cv_folds``, cross-validate it on the
    view's train and val images); write and return its result."""
    from pipeline.ml.fit import train as fit

    started = time.perf_counter()
    trial = params.model_copy(update={"train": apply(params.train, values)})
    if params.tune.cv_folds:
        result = {"values": values, **_crossval_result(records, split_file, out, trial)}
    else:
        report = fit(records, out / "model", out / "reports", trial.train, params.seed)
        result = {"values": values, **asdict(report)}
    result["seconds"] = round(time.perf_counter() - started, 1)
    (out / "result.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return result


def _crossval_result(records: Path, split_file: Path, out: Path, trial: Params) -> dict[str, Any]:
    """A trial's result from k folds: its "val" figures are the pooled out-of-fold ones (every
    train and val image, each predicted by the model that did not see it), its "train"
    figures the folds' mean, its best epoch the folds' median."""
    from pipeline.ml.crossval import cross_validate, summarise

    results, place = cross_validate(records, split_file, out / "crossval", trial,
                                    trial.tune.cv_folds)
    details = summarise(results, features.read_meta(records)["class_names"], trial)
    shutil.rmtree(place, ignore_errors=True)
    pooled = details["pooled"]
    val = {"loss": pooled["loss"], "accuracy": pooled["accuracy"], "auc": pooled["roc_auc"]}
    train = {k: round(statistics.fmean(r["train"][k] for r in results), 6) for k in val}
    return {"best_epoch": int(statistics.median_low(r["best_epoch"] for r in results)),
            "epochs_run": max(r["epochs_run"] for r in results), "train": train, "val": val,
            "gap": {"accuracy": round(train["accuracy"] - val["accuracy"], 6),
                    "loss": round(val["loss"] - train["loss"], 6),
                    "auc": round(train["auc"] - val["auc"], 6)},
            "crossval": {k: details[k] for k in ("folds", "images", "mean", "sd")}}


def trial_table(result: dict[str, Any]) -> list[dict[str, Any]]:
    """A trial's loss, accuracy and AUC on train and val at its best epoch, and the gap."""
    rows = [{"split": name, **{m: result[name][m] for m in ("loss", "accuracy", "auc")}}
            for name in SEEN]
    rows.append({"split": "gap (train - val; loss: val - train)", **result["gap"]})
    return rows


def _trial_rows(done: list[Any], space: dict[str, Dimension]) -> list[dict[str, Any]]:
    rows = []
    for t in done:
        result = t.user_attrs["result"]
        rows.append({"number": t.number, "score": t.value,
                     "gap_accuracy": result["gap"]["accuracy"],
                     "val_accuracy": result["val"]["accuracy"], "val_auc": result["val"]["auc"],
                     "best_epoch": result["best_epoch"],
                     **{f"train.{k}": json.dumps(v) for k, v in decode(t.params, space).items()}})
    return rows


def write_report(study: Any, settings: TuneParams, work: Path) -> dict[str, Any]:
    """``trials.csv``, ``trials.png``, ``best_params.yaml`` and ``best.json`` in ``work`` for the
    completed trials of ``study``; returns the summary (``best.json``'s content)."""
    import csv

    import optuna

    from pipeline.ml import plots

    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise UserError("every trial failed; their task logs in the UI say why")
    rows = _trial_rows(done, settings.space)
    best = study.best_trial
    values = decode(best.params, settings.space)
    with (work / "trials.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    plots.tuning_trials(rows, settings.metric, best.number, work / "trials.png")
    change = params_change(values)
    (work / "best_params.yaml").write_text(
        f"# tune: best of {len(done)} trials, {settings.metric} {best.value:.4f} on "
        f"{scored_on(settings)} "
        f"(trial {best.number}).\n# Merge into params.yaml's train section, or run the "
        "experiment below.\n" + change)
    summary = {"study": study.study_name, "trials": len(done), "best_trial": best.number,
               "metric": settings.metric, "scored_on": scored_on(settings),
               "best_score": best.value, "best_values": values,
               "best_result": best.user_attrs["result"],
               "command": " ".join(["dvc", "exp", "run", *set_arguments(values)])}
    (work / "best.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--records", type=Path, required=True,
                        help="a train/val view of data/tfrecords (no test shards)")
    parser.add_argument("--out", type=Path, required=True, help="the trial's folder")
    parser.add_argument("--values", required=True, help="JSON: train keys to change")
    parser.add_argument("--split", type=Path, default=Path("data/split/split.jsonl"),
                        help="the near-duplicate groups, for tune.cv_folds")


def run(args: argparse.Namespace) -> None:
    params = load_params(args.params)
    try:
        values = json.loads(args.values)
    except json.JSONDecodeError as err:
        raise UserError(f"--values is not JSON ({err})") from None
    if any(path.name.startswith("test-") for path in args.records.glob("*.tfrecord")):
        raise UserError(f"{args.records}: holds test shards; a trial reads a train/val view only")
    try:
        apply(params.train, values)
    except ValueError as err:
        raise UserError(f"--values: {str(err).splitlines()[0]}") from None
    load_tensorflow()  # after the checks, so a bad call answers at once; notices to debug
    result = run_trial(args.records, args.out, params, values, args.split)
    logger.info("trial: %s loss %.4f, accuracy %.3f, auc %.3f; train-val accuracy gap %+.3f "
                "(best epoch %d of %d)", f"{params.tune.cv_folds}-fold out-of-fold"
                if params.tune.cv_folds else "val", result["val"]["loss"], result["val"]["accuracy"],
                result["val"]["auc"], result["gap"]["accuracy"], result["best_epoch"],
                result["epochs_run"])
