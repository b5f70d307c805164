"""``make serve``: a local Prefect server and UI, and the scheduled retrain deployment.

Starts ``prefect server start`` on 127.0.0.1 (unless ``PREFECT_API_URL`` names a
server already, or one answers on the port), then serves the ``retrain`` flow as
the deployment ``retrain/scheduled`` with the cron schedule of ``flow.schedule``
in params.yaml (or every ``--every`` seconds, to watch the schedule fire). Scheduled
runs crawl again (``flow.force_scrape``); one runs at a time, so two retrains never
share a checkout. Trigger a run now with ``make retrain-now``. Ctrl-C stops both.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from flows.server import api_url, cli_logging, is_up, own_server, start_server, stop_server
from pipeline.config.flow import FlowParams
from pipeline.config.params import load_params
from pipeline.runtime.errors import UserError

DEPLOYMENT = "scheduled"
logger = logging.getLogger("happysad.serve")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m flows.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=4200)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--every", type=float, metavar="SECONDS",
                        help="schedule a run every SECONDS instead of flow.schedule's cron "
                             "(to try the schedule out)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging: every API call, DVC's hints, native start-up notices")
    return parser


class _ServeError(Exception):
    """A one-line reason to stop, and the exit status."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


def _without_password(url: str) -> str:
    """A database URL as it may be logged: the password, if any, left out."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    return f"{scheme}{sep}{credentials.split(':', 1)[0]}{at}{host}" if at else url


def _server_for(port: int) -> tuple[str, subprocess.Popen | None]:
    """The API URL to serve on, and the server process this started (None: one was up)."""
    url = os.environ.get("PREFECT_API_URL") or api_url(port)
    home = Path(os.environ.get("PREFECT_HOME", ".prefect")).resolve()
    ours, why = own_server(port, home) if "PREFECT_API_URL" not in os.environ else (url, "")
    if ours is None and is_up(url):
        raise _ServeError(f"{why}; stop that server, or serve on another port: "
                          f"make serve PREFECT_PORT={port + 1}")
    if is_up(url):
        return url, None
    if "PREFECT_API_URL" in os.environ:
        raise _ServeError(f"no Prefect server answers at PREFECT_API_URL={url}; start it, or "
                          "unset PREFECT_API_URL to start a local one")
    database = os.environ.get("PREFECT_API_DATABASE_CONNECTION_URL") or os.environ.get(
        "PREFECT_SERVER_DATABASE_CONNECTION_URL")
    where = (f"database {database.split('://', 1)[0]} at {_without_password(database)}"
             if database else f"database in {home}")
    logger.info("starting a Prefect server on 127.0.0.1:%d (%s)", port, where)
    try:
        return url, start_server(home, port, home / "server.log")
    except RuntimeError as err:
        raise _ServeError(str(err), 1) from None


def _serve(settings: FlowParams, every: float | None) -> None:
    from prefect.schedules import Cron, Interval

    from flows.retrain import retrain
    from flows.runner import SigtermAsCtrlC

    if every:
        schedule, when = Interval(every, timezone=settings.timezone), f"every {every:g} s"
    else:
        schedule = Cron(settings.schedule, timezone=settings.timezone)
        when = f"cron '{settings.schedule}' ({settings.timezone})"
    logger.info("serving retrain/%s on %s; run one now: make retrain-now", DEPLOYMENT, when)
    # limit=1: a run due while another is going waits, so two retrains never share a checkout
    runner = SigtermAsCtrlC(name=DEPLOYMENT, pause_on_shutdown=False, limit=1)
    runner.add_flow(retrain, name=DEPLOYMENT, schedules=[schedule],
                    parameters={"force_scrape": settings.force_scrape}, tags=["happysad"])
    asyncio.run(runner.start())


def _as_ctrl_c(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cli_logging(args.verbose)
    try:
        settings = load_params(args.params).flow
        url, server = _server_for(args.port)
    except UserError as err:
        sys.stderr.write(f"serve: error: {err}\n")
        return 2
    except _ServeError as err:
        sys.stderr.write(f"serve: error: {err}\n")
        return err.status
    os.environ["PREFECT_API_URL"] = url  # before Prefect is imported: its settings read it once
    signal.signal(signal.SIGTERM, _as_ctrl_c)  # from here on, SIGTERM stops as Ctrl-C does
    logger.info("Prefect UI: %s  (runs: %s/runs)", url.removesuffix("/api"), url.removesuffix("/api"))
    try:
        _serve(settings, args.every)
    except KeyboardInterrupt:
        pass
    finally:
        # a terminal's Ctrl-C reaches this process twice (from the terminal, and forwarded by
        # `uv run`): the second must not cut the server's shutdown short with a traceback
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if server is not None:
            stop_server(server)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
