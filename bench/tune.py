"""Benchmark: the untuned default against the tuned best, same budget of epochs, on the demo
site and on FER-2013 happy/sad.

For each dataset, side by side in one run (this machine is shared and noisy):

1. a search of ``--trials`` trials (Optuna TPE over params.yaml's ``tune.space``, with
   ``epochs`` fixed to the same budget for every trial), each trained on a train/val
   view of the records and scored on val by ``tune.metric`` (the test split is not in
   its folder); trial 0 is the untuned default, as the tune flow does it;
2. the default (trial 0) and the best trial's model evaluated once on the held-out
   test split.

The demo records come from ``dvc repro tfrecords`` in a fresh copy of the project;
FER's are built as in ``bench.model`` (train on FER train; val and test carved from
FER validation with every near-duplicate of a training face removed).

Run: ``uv run python -m bench.tune [--trials 8] [--epochs 10] [--skip-demo] [--skip-fer]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import print_table

REPO = Path(__file__).resolve().parents[1]
Row = tuple[str, str, str]


def demo_records(work: Path) -> Path:
    from testing.project import copy_project, tool_env

    project = copy_project(work / "project")
    subprocess.run(["dvc", "repro", "tfrecords"], cwd=project, env=tool_env(), check=True,
                   capture_output=True)
    return project / "data" / "tfrecords"


def trial(view: Path, out: Path, values: dict[str, Any]) -> dict[str, Any]:
    """One trial in its own process, as the tune flow runs it."""
    subprocess.run([sys.executable, "-m", "pipeline", "--params", str(REPO / "params.yaml"),
                    "tune", "--records", str(view), "--out", str(out), "--values",
                    json.dumps(values)], cwd=REPO, check=True, capture_output=True)
    return json.loads((out / "result.json").read_text())


def test_metrics(records: Path, out: Path) -> dict[str, Any]:
    from pipeline.config.params import load_params
    from pipeline.stages.evaluate import evaluate

    return evaluate(out / "model" / "model.keras", records, out / "reports", out / "test",
                    load_params(REPO / "params.yaml").evaluate)


def compare(name: str, records: Path, work: Path, trials: int, epochs: int) -> list[Row]:

    from pipeline.config.params import load_params
    from pipeline.tools.tune import create_study, score, suggest, train_val_view

    params = load_params(REPO / "params.yaml")
    metric = params.tune.metric
    space = {k: v for k, v in params.tune.space.items() if k != "epochs"}
    view = train_val_view(records, work / "view")
    study = create_study(params.tune, params.seed, params.train, space)  # trial 0: the default
    results: dict[int, dict[str, Any]] = {}
    started = time.perf_counter()
    for _ in range(trials):
        t = study.ask()
        values = {**suggest(t, space, params.train), "epochs": epochs}
        results[t.number] = trial(view, work / f"trial-{t.number}", values)
        study.tell(t, score(results[t.number], metric))
        done = results[t.number]
        line = (f"{name}: trial {t.number} ({t.number + 1} of {trials}), {metric} {score(done, metric):.4f} "
                f"({done['seconds'] / 60:.1f} min)")
        print(line, file=sys.stderr, flush=True)  # noqa: T201 - progress of a long benchmark
    search_minutes = (time.perf_counter() - started) / 60
    best = study.best_trial.number
    default, tuned = results[0], results[best]
    on_test = {"default": test_metrics(records, work / "trial-0"),
               "tuned": test_metrics(records, work / f"trial-{best}")}

    def figures(result: dict[str, Any], test: dict[str, Any]) -> str:
        return (f"test AUC {test['roc_auc']:.3f}, {metric} {score(result, metric):.4f}, "
                f"train-val accuracy gap {result['gap']['accuracy']:+.3f}, best epoch "
                f"{result['best_epoch']} of {result['epochs_run']}")

    changed = {k: v for k, v in tuned["values"].items() if k != "epochs"}
    return [
        (f"{name}: default, test accuracy", f"{on_test['default']['accuracy']:.3f}",
         figures(default, on_test["default"]) + f"; trial 0 ({default['seconds'] / 60:.1f} min)"),
        (f"{name}: tuned best, test accuracy", f"{on_test['tuned']['accuracy']:.3f}",
         figures(tuned, on_test["tuned"]) + f"; trial {best}, the best of {trials} "
         f"({search_minutes:.1f} min for the search)"),
        (f"{name}: tuned values", "", json.dumps(changed, sort_keys=True)),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=10, help="every run's epoch budget")
    parser.add_argument("--fer-size", type=int, default=64)
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--skip-fer", action="store_true")
    args = parser.parse_args(argv)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="happysad-bench-") as tmp:
        work = Path(tmp)
        if not args.skip_demo:
            rows += compare("demo site", demo_records(work / "demo"), work / "demo-tune",
                            args.trials, args.epochs)
        if not args.skip_fer:
            from bench.model import FER_TAR, fer_records

            if FER_TAR.exists():
                records, _ = fer_records(work / "fer", args.fer_size)
                rows += compare(f"FER-2013 at {args.fer_size} px", records, work / "fer-tune",
                                args.trials, args.epochs)
            else:
                rows.append(("FER-2013", "skipped", f"{FER_TAR.name} not found"))
    print_table(f"happysad tuning benchmark ({args.trials} trials, {args.epochs} epochs per run)",
                rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
