"""The retrain flow: every DVC stage as a Prefect task, then champion against challenger.

Run once: ``python -m flows.retrain [--force-scrape]`` (``make run`` does this).
On a schedule: ``make serve`` (see ``flows/serve.py``).

The task list is read from ``dvc.yaml`` through DVC's own graph, and each task
runs its stage through DVC, so a stage that is up to date is skipped, or
restored from the run-cache, exactly as ``dvc repro`` would. The flow adds what
DVC lacks: retries with back-off on the crawl, a timeout on every task, logs and
artifacts per task in the UI, the promotion step, and a DVC experiment per run.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.tasks import exponential_backoff

from flows import artifacts
from flows.server import own_server, quiet_or_verbose
from flows.stages import StageFailedError, repro_stage, run_command, stage_order
from pipeline.config.params import Params, load_params
from pipeline.contracts.export import FACE_SET
from pipeline.runtime.errors import UserError
from pipeline.runtime.folders import check_folder
from pipeline.scrape.folder import check_import_folders

CRAWL_STAGE = "scrape"  # the stage `force_scrape` re-runs: new images flow in through it
PRODUCTION = "models/production"  # the champion: `happysad promote` writes it, DVC versions it
PROMOTIONS = "models/promotions.jsonl"  # every promotion decision: small, git-tracked


@task(cache_policy=NO_CACHE)  # DVC is the cache: a task always asks it
def run_stage(project: str, stage: str, force: bool, timeout_s: float) -> dict:
    """Bring one stage up to date through DVC and publish what it produced."""
    logger = get_run_logger()
    root = Path(project)
    result = repro_stage(root, stage, logger, force=force, timeout_s=timeout_s)
    logger.info("%s: %s in %.1f s", stage, result.outcome, result.seconds)
    builder = artifacts.BY_STAGE.get(stage)
    if builder:
        artifacts.publish(builder(root))
    return {"stage": stage, "outcome": result.outcome, "seconds": round(result.seconds, 2)}


@task(cache_policy=NO_CACHE, task_run_name="promote")
def promote(project: str, run_name: str, timeout_s: float) -> dict:
    """Score the production model on this run's test split; promote the new one if it wins."""
    logger = get_run_logger()
    root = Path(project)
    run_command([sys.executable, "-m", "pipeline", "promote", "--run-name", run_name],
                root, logger, timeout_s)
    decision = json.loads((root / "reports" / "promote" / "decision.json").read_text())
    if decision["promoted"] or not (root / f"{PRODUCTION}.dvc").exists():
        # The champion is DVC-tracked (models/production.dvc, committed with dvc.lock), so
        # `dvc push` ships it and a second clone's `dvc pull` serves it without retraining.
        run_command([sys.executable, "-m", "dvc", "add", PRODUCTION], root, logger, timeout_s)
    artifacts.publish(artifacts.promotion_artifacts(decision))
    return decision


@task(cache_policy=NO_CACHE, task_run_name="record-experiment")
def record_experiment(project: str, name: str, timeout_s: float, changed: bool = True) -> str | None:
    """Save this run's params, data hashes and metrics as a DVC experiment (`dvc exp show`),
    unless no stage changed any output (``changed``): then it would repeat the last one."""
    logger = get_run_logger()
    root = Path(project)
    if not changed:
        message = ("no stage changed any output (dvc.lock is as it was): no new DVC experiment "
                   "recorded; `dvc exp show` already holds this state")
        logger.info(message)
        artifacts.publish([artifacts.Artifact("experiment", "The DVC experiment recording this run",
                                              markdown=f"**No new DVC experiment**: {message}.")])
        return None
    head = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=root,
                          capture_output=True, text=True)
    if head.returncode != 0:
        logger.warning("%s is not a git repository with a commit: no DVC experiment recorded", root)
        return None
    untracked = [p for p in (f"{PRODUCTION}.dvc", PROMOTIONS) if (root / p).exists()]
    run_command([sys.executable, "-m", "dvc", "exp", "save", "--name", name,
                 *(a for p in untracked for a in ("--include-untracked", p))], root, logger, timeout_s)
    artifacts.publish([artifacts.Artifact(
        "experiment", "The DVC experiment recording this run",
        markdown=f"DVC experiment **`{name}`**: compare with `dvc exp show`, restore with "
                 f"`dvc exp apply {name}` then `dvc checkout`.")])
    return name


def _read_lock(root: Path) -> str | None:
    try:
        return (root / "dvc.lock").read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def experiment_name(run_name: str, run_id: str) -> str:
    """A git-ref-safe experiment name after the Prefect run, unique per run."""
    safe = "".join(c if c.isalnum() or c == "-" else "-" for c in run_name.lower()).strip("-")
    return f"{safe or 'retrain'}-{run_id[:8]}"


def checked_inputs(root: Path) -> Params:
    """params.yaml, and the folders DVC hashes by hand-filled content, checked before DVC reads
    them: what it would hang or fail on (an alias bomb, a FIFO, a name that is not UTF-8, a
    dangling link) is one line here."""
    all_params = load_params(root / "params.yaml")
    check_import_folders(all_params.scrape, root)
    check_folder(root / FACE_SET)
    return all_params


@flow(name="retrain", description=__doc__.splitlines()[0])
def retrain(project: str = ".", force_scrape: bool = False, promote_model: bool = True,
            record: bool = True) -> dict:
    """Run the DAG of ``project`` stage by stage through DVC, then promote and record."""
    logger = get_run_logger()
    root = Path(project).resolve()
    params = checked_inputs(root).flow
    order = stage_order(root)
    logger.info("stages from dvc.yaml: %s", " -> ".join(order))
    lock_before = _read_lock(root)
    stages = {}
    for stage in order:
        timeout = params.stage_timeout_s.get(stage, params.default_timeout_s)
        options: dict = {"name": stage, "task_run_name": stage, "timeout_seconds": timeout}
        if stage == CRAWL_STAGE:
            options.update(retries=params.scrape_retries,
                           retry_delay_seconds=exponential_backoff(params.retry_delay_s))
        stages[stage] = run_stage.with_options(**options)(
            str(root), stage, force_scrape and stage == CRAWL_STAGE, timeout)
    name = experiment_name(flow_run.get_name() or "retrain", flow_run.get_id() or "local")
    decision = promote(str(root), name, params.default_timeout_s) if promote_model else None
    changed = _read_lock(root) != lock_before
    experiment = record_experiment(str(root), name, params.default_timeout_s, changed) if record else None
    return {"stages": stages, "promotion": decision, "experiment": experiment}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.retrain", description=__doc__.splitlines()[0])
    parser.add_argument("--project", default=".", help="project root (default: %(default)s)")
    parser.add_argument("--force-scrape", action="store_true", help="crawl again for new images")
    parser.add_argument("--no-promote", action="store_true", help="stop after the save stage")
    parser.add_argument("--no-record", action="store_true", help="do not save a DVC experiment")
    parser.add_argument("--port", type=int, default=4200,
                        help="report to the local server of `make serve` when it is up on this port")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging: DVC's hints, native start-up notices, API calls")
    args = parser.parse_args(argv)
    quiet_or_verbose(args.verbose)
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    url, why = PREFECT_API_URL.value(), "PREFECT_API_URL"
    if not url:  # `make serve` of this checkout is running: show this run in its UI
        url, why = own_server(args.port, Path(PREFECT_HOME.value()))
    where = (f"{url} ({why})" if url else
             f"a temporary Prefect server on the history in {PREFECT_HOME.value()} ({why}; "
             "`make serve` shows these runs in the UI)")
    log = logging.getLogger("happysad.retrain")
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    log.info("retrain: reporting to %s", where)
    try:
        checked_inputs(Path(args.project).resolve())  # one line, before Prefect's run starts
        with temporary_settings({PREFECT_API_URL: url} if url else {}):
            result = retrain(args.project, args.force_scrape, not args.no_promote, not args.no_record)
    except (UserError, StageFailedError, TimeoutError) as err:
        sys.stderr.write(f"retrain: error: {err}\n")
        return 1
    summary = ", ".join(f"{s['stage']} {s['outcome']}" for s in result["stages"].values())
    log.info("retrain: %s", summary)
    if result["promotion"]:
        log.info("retrain: %s: %s", "promoted to models/production/" if result["promotion"]["promoted"]
                 else "models/production/ kept", result["promotion"]["reason"])
    if result["experiment"]:
        log.info("retrain: recorded as DVC experiment %s (uv run dvc exp show)", result["experiment"])
    elif not args.no_record:
        log.info("retrain: no stage changed any output, so no new DVC experiment was recorded")
    log.info("retrain: to share this state: git add dvc.lock %s.dvc %s models/.gitignore, "
             "git commit, then `make push` (docs/operations.md, 'Sharing with a second machine')",
             PRODUCTION, PROMOTIONS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
