"""``make deploy POOL=gpu``: the retrain flow as a deployment of a Prefect work pool, so that
whichever machine runs a worker of that pool (``make worker POOL=gpu`` in its own checkout)
trains.

Creates the process work pool ``--pool`` when it is missing, then the deployment
``retrain/<pool>`` with ``flow.schedule``'s cron (or ``--every`` seconds, or ``--no-schedule``).
Its one pull step moves a run into the checkout of the worker that takes it: the worker's
``HAPPYSAD_CHECKOUT`` (``make worker`` sets it to its folder), so each machine trains in its own
clone, with its own DVC cache and GPU, and shares results through the DVC remote. Needs a
Prefect server: ``PREFECT_API_URL``, or ``make serve`` on this machine's port.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import logging
import os
import sys
from pathlib import Path

from flows.server import api_url, cli_logging, is_up
from pipeline.config.flow import FlowParams
from pipeline.config.params import load_params
from pipeline.runtime.errors import UserError

ENTRYPOINT = "flows/retrain.py:retrain"
CHECKOUT = "HAPPYSAD_CHECKOUT"  # the environment variable that names a worker's checkout
logger = logging.getLogger("happysad.deploy")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m flows.deploy", description=__doc__.splitlines()[0])
    parser.add_argument("--pool", required=True, help="the work pool (created as a process pool if missing)")
    parser.add_argument("--port", type=int, default=4200, help="the local server's port when "
                        "PREFECT_API_URL is not set (default: %(default)s)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    when = parser.add_mutually_exclusive_group()
    when.add_argument("--every", type=float, metavar="SECONDS", help="a run every SECONDS instead of "
                      "flow.schedule's cron")
    when.add_argument("--no-schedule", action="store_true", help="runs only when asked for "
                      "(prefect deployment run retrain/POOL)")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def pull_steps() -> list[dict]:
    """What a worker does before it runs the flow: move into its own checkout (resolved on the
    worker's machine when the run starts)."""
    return [{"prefect.deployments.steps.set_working_directory": {"directory": "{{ $" + CHECKOUT + " }}"}}]


async def deploy(pool: str, schedule: object | None, parameters: dict) -> str:
    """Create ``pool`` if missing and (re)create ``retrain/<pool>``; return its id."""
    from prefect import get_client
    from prefect.client.schemas.actions import DeploymentScheduleCreate, WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.utilities.callables import parameter_schema
    from prefect.workers.process import ProcessWorker

    from flows.retrain import retrain

    async with get_client() as client:
        try:
            found = await client.read_work_pool(pool)
            if found.type != "process":
                raise UserError(f"work pool {pool!r} is a {found.type} pool; name another with --pool, "
                                "or one of type process")
        except ObjectNotFound:
            await client.create_work_pool(WorkPoolCreate(
                name=pool, type="process", concurrency_limit=None,
                base_job_template=ProcessWorker.get_default_base_job_template()))
            logger.info("created the process work pool %r", pool)
        flow_id = await client.create_flow_from_name(retrain.name)
        deployment = await client.create_deployment(
            flow_id, pool, work_pool_name=pool, entrypoint=ENTRYPOINT, pull_steps=pull_steps(),
            parameters=parameters, parameter_openapi_schema=parameter_schema(retrain).model_dump(),
            schedules=[DeploymentScheduleCreate(schedule=schedule)] if schedule else [],
            concurrency_limit=1,  # a run due while another is going waits
            tags=["happysad"], description=f"retrain on a worker of the {pool!r} pool, in its checkout")
    return str(deployment)


def _schedule(args: argparse.Namespace, settings: FlowParams) -> tuple[object | None, str]:
    """The deployment's schedule and how to say it."""
    from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule

    if args.no_schedule:
        return None, "no schedule"
    if args.every:
        return (IntervalSchedule(interval=datetime.timedelta(seconds=args.every), timezone=settings.timezone),
                f"every {args.every:g} s")
    return CronSchedule(cron=settings.schedule, timezone=settings.timezone), f"cron '{settings.schedule}'"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cli_logging(args.verbose)
    url = os.environ.get("PREFECT_API_URL") or api_url(args.port)
    try:
        settings = load_params(args.params).flow
        if not is_up(url):
            raise UserError(f"no Prefect server answers at PREFECT_API_URL={url}; start it, or "
                            "unset PREFECT_API_URL to deploy to `make serve` on this machine"
                            if os.environ.get("PREFECT_API_URL") else
                            f"no Prefect server answers at {url}; start one (make serve) or set "
                            "PREFECT_API_URL")
        os.environ["PREFECT_API_URL"] = url  # before Prefect is imported: its settings read it once
        schedule, when = _schedule(args, settings)
        asyncio.run(deploy(args.pool, schedule, {"force_scrape": settings.force_scrape}))
    except UserError as err:
        sys.stderr.write(f"deploy: error: {err}\n")
        return 2
    logger.info("deployed retrain/%s (%s) on %s; on each training machine, in its checkout: "
                "make worker POOL=%s; run one now: prefect deployment run retrain/%s",
                args.pool, when, url.removesuffix("/api"), args.pool, args.pool)
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
