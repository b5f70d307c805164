"""The tune flow: a budgeted Optuna search over params.yaml's ``tune.space``, trials as tasks.

Run: ``python -m flows.tune [--trials N] [--parallel N] [--dask-address tcp://...]``
(``make tune``). The data stages are brought up to date through DVC first; then
Optuna's TPE sampler proposes ``parallel`` trials at a time (ask; trial 0 is
params.yaml's own values, so the best is never worse on val than the current), each runs as a
Prefect task in its own process on a train/val view of the records, and its val
score goes back to the study (tell). The study lives in ``reports/tune/study.db``,
so a stopped search resumes where it was. At the end: a plot of every trial's
score and overfitting gap, the best values as a params change, and (with
``tune.experiment``) those values run through the whole DAG as a DVC experiment.

Why Optuna rather than keras-tuner: its ask/tell interface lets Prefect own the
trials (each a task in the UI, run by whatever task runner is configured, Dask
included), where keras-tuner runs its own loop in one process; its study is a
SQLite file that resumes after a crash; and its define-by-run space maps one to
one onto the keys of params.yaml, which keras-tuner's HyperModel would duplicate.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from flows import artifacts
from flows.retrain import run_stage
from flows.server import own_server
from flows.stages import StageFailedError, run_command, stage_order
from pipeline.config.params import Params, load_params
from pipeline.runtime.cluster import scheduler_address
from pipeline.runtime.errors import UserError

DATA_STAGES_END = "tfrecords"  # the last stage a search needs: trials read its records


@task(cache_policy=NO_CACHE)
def run_trial(project: str, view: str, out: str, values: dict[str, Any], timeout_s: float) -> dict:
    """Train one trial in its own process on the train/val view; return its result."""
    from pipeline.tools.tune import trial_table

    logger = get_run_logger()
    logger.info("trial values: %s", json.dumps(values, sort_keys=True))
    run_command([sys.executable, "-m", "pipeline", "tune", "--records", view, "--out", out,
                 "--values", json.dumps(values), "--split",
                 str(Path(project) / "data" / "split" / "split.jsonl")],
                Path(project), logger, timeout_s)
    result = json.loads((Path(out) / "result.json").read_text())
    artifacts.publish([artifacts.Artifact(
        "tune-trial", f"{Path(out).name}: {json.dumps(values, sort_keys=True)}; best epoch "
        f"{result['best_epoch']} of {result['epochs_run']}", table=trial_table(result))])
    return result


def _task_runner(parallel: int, dask_address: str, setting: str) -> Any:
    if dask_address:
        from prefect_dask import DaskTaskRunner

        # one line for an address that is not a scheduler's, before Prefect waits on it
        return DaskTaskRunner(address=scheduler_address(dask_address, setting))
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=parallel)  # each trial is a process of its own


def _search(study: Any, params: Params, root: Path, view: Path, budget: int, at_once: int,
            timeout: float) -> None:
    """Ask ``at_once`` trials, submit each as a task, tell the study each score; until
    ``budget`` trials have finished."""
    import optuna

    from pipeline.tools.tune import score, suggest

    settings, logger = params.tune, get_run_logger()
    finished = lambda: [t for t in study.trials if t.state.is_finished()]  # noqa: E731
    if finished():
        logger.info("resuming search %s: %d of %d trials already finished", study.study_name,
                    len(finished()), budget)
    while len(finished()) < budget:
        asked = [study.ask() for _ in range(min(at_once, budget - len(finished())))]
        futures = []
        for trial in asked:
            values = suggest(trial, settings.space, params.train)
            out = root / "reports" / "tune" / "trials" / study.study_name / f"trial-{trial.number:03d}"
            futures.append(run_trial.with_options(task_run_name=f"trial-{trial.number}").submit(
                str(root), str(view), str(out), values, timeout))
        for trial, future in zip(asked, futures, strict=True):
            try:
                result = future.result()
            except Exception as err:  # noqa: BLE001 - a failed trial is recorded, the search goes on
                logger.warning("trial %d failed: %s", trial.number, err)
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                continue
            trial.set_user_attr("result", result)
            study.tell(trial, score(result, settings.metric))
            logger.info("trial %d: %s %.4f, train-val accuracy gap %+.3f", trial.number,
                        settings.metric, score(result, settings.metric), result["gap"]["accuracy"])


def _publish_summary(summary: dict[str, Any], work: Path) -> None:
    from pipeline.tools.tune import params_change

    change = params_change(summary["best_values"])
    artifacts.publish([artifacts.Artifact(
        "tune-summary", f"best of {summary['trials']} trials by {summary['metric']} on "
        f"{summary['scored_on']}",
        markdown=artifacts.image_markdown(work / "trials.png", "Trials: val score and overfitting gap")
        + f"\n### Best: trial {summary['best_trial']}, {summary['metric']} "
        f"{summary['best_score']:.4f}\n\n```yaml\n{change}```\n\nRun it through the whole DAG:"
        f"\n\n```sh\n{summary['command']}\n```\n")])


@flow(name="tune")
def tune(project: str = ".", trials: int | None = None, parallel: int | None = None,
         experiment: bool | None = None) -> dict:
    """Search ``tune.space`` on train/val; write the best values and (optionally) run them."""
    from pipeline.tools.tune import create_study, set_arguments, study_key, train_val_view, write_report

    logger = get_run_logger()
    root = Path(project).resolve()
    params = load_params(root / "params.yaml")
    settings, timeouts = params.tune, params.flow
    timeout = timeouts.stage_timeout_s.get("train", timeouts.default_timeout_s)
    order = stage_order(root)
    for stage in order[:order.index(DATA_STAGES_END) + 1]:
        run_stage.with_options(task_run_name=stage)(
            str(root), stage, False, timeouts.stage_timeout_s.get(stage, timeouts.default_timeout_s))

    work = root / "reports" / "tune"
    view = train_val_view(root / "data" / "tfrecords", work / "records")
    key = study_key(view, params.train, settings.space, params.seed, settings.metric,
                    settings.cv_folds)
    study = create_study(settings, params.seed, params.train, settings.space,
                         storage=f"sqlite:///{work / 'study.db'}", name=key)
    _search(study, params, root, view, trials or settings.trials, parallel or settings.parallel,
            timeout)
    summary = write_report(study, settings, work)
    _publish_summary(summary, work)
    if settings.experiment if experiment is None else experiment:
        name = f"tune-{(flow_run.get_name() or 'best')}-{(flow_run.get_id() or 'local')[:8]}"
        run_command([sys.executable, "-m", "dvc", "exp", "run", "--name", name,
                     *set_arguments(summary["best_values"])], root, logger, timeout * 2)
        summary["experiment"] = name
        logger.info("best values run through the DAG as DVC experiment %s "
                    "(`dvc exp show`; `dvc exp apply %s` puts them in params.yaml)", name, name)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.tune", description=__doc__.splitlines()[0])
    parser.add_argument("--project", default=".", help="project root (default: %(default)s)")
    parser.add_argument("--trials", type=int, help="budget (default: tune.trials)")
    parser.add_argument("--parallel", type=int, help="trials at once (default: tune.parallel)")
    parser.add_argument("--dask-address", help="a Dask scheduler to run trials on "
                        "(default: tune.dask_address; empty: this machine)")
    parser.add_argument("--no-experiment", action="store_true",
                        help="do not run the best values through the DAG")
    parser.add_argument("--port", type=int, default=4200,
                        help="report to the local server of `make serve` when it is up on this port")
    args = parser.parse_args(argv)
    from prefect.settings import PREFECT_API_URL, temporary_settings

    log = logging.getLogger("happysad.tune")
    log.addHandler(logging.StreamHandler())
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        settings = load_params(Path(args.project) / "params.yaml").tune
        from prefect.settings import PREFECT_HOME

        url, why = PREFECT_API_URL.value(), "PREFECT_API_URL"
        if not url:  # `make serve` of this checkout is running: show the search in its UI
            url, why = own_server(args.port, Path(PREFECT_HOME.value()))
        log.info("tune: reporting to %s (%s)", url or "a temporary Prefect server", why)
        runner = _task_runner(args.parallel or settings.parallel,
                              args.dask_address if args.dask_address is not None
                              else settings.dask_address,
                              "--dask-address" if args.dask_address is not None
                              else "tune.dask_address")
        with temporary_settings({PREFECT_API_URL: url} if url else {}):
            result = tune.with_options(task_runner=runner)(
                args.project, args.trials, args.parallel,
                False if args.no_experiment else None)
    except (UserError, StageFailedError, TimeoutError) as err:
        sys.stderr.write(f"tune: error: {err}\n")
        return 1
    log.info("tune: best of %d trials is trial %d, %s %.4f on %s; values in "
             "reports/tune/best_params.yaml; plot in reports/tune/trials.png%s", result["trials"],
             result["best_trial"], result["metric"], result["best_score"], result["scored_on"],
             f"; DVC experiment {result['experiment']}" if "experiment" in result else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
