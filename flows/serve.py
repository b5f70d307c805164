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
import logging
import os
import sys
from pathlib import Path

from flows.server import api_url, is_up, own_server, quiet_or_verbose, start_server, stop_server
from pipeline.errors import UserError
from pipeline.params import load_params

DEPLOYMENT = "scheduled"
logger = logging.getLogger("happysad.serve")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=4200)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--every", type=float, metavar="SECONDS",
                        help="schedule a run every SECONDS instead of flow.schedule's cron "
                             "(to try the schedule out)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging: every API call, DVC's hints, native start-up notices")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    quiet_or_verbose(args.verbose)
    try:
        settings = load_params(args.params).flow
    except UserError as err:
        sys.stderr.write(f"serve: error: {err}\n")
        return 2
    server = None
    url = os.environ.get("PREFECT_API_URL") or api_url(args.port)
    home = Path(os.environ.get("PREFECT_HOME", ".prefect")).resolve()
    ours, why = own_server(args.port, home) if "PREFECT_API_URL" not in os.environ else (url, "")
    if ours is None and is_up(url):
        sys.stderr.write(f"serve: error: {why}; stop that server, or "
                         f"serve on another port: make serve PREFECT_PORT={args.port + 1}\n")
        return 2
    if not is_up(url):
        if "PREFECT_API_URL" in os.environ:
            sys.stderr.write(f"serve: error: no Prefect server answers at PREFECT_API_URL={url}; "
                             "start it, or unset PREFECT_API_URL to start a local one\n")
            return 2
        logger.info("starting a Prefect server on 127.0.0.1:%d (database in %s)", args.port, home)
        try:
            server = start_server(home, args.port, home / "server.log")
        except RuntimeError as err:
            sys.stderr.write(f"serve: error: {err}\n")
            return 1
    os.environ["PREFECT_API_URL"] = url  # before Prefect is imported: its settings read it once
    logger.info("Prefect UI: %s  (runs: %s/runs)", url.removesuffix("/api"), url.removesuffix("/api"))
    try:
        from prefect.schedules import Cron, Interval

        from flows.retrain import retrain

        if args.every:
            schedule, when = Interval(args.every, timezone=settings.timezone), f"every {args.every:g} s"
        else:
            schedule = Cron(settings.schedule, timezone=settings.timezone)
            when = f"cron '{settings.schedule}' ({settings.timezone})"
        logger.info("serving retrain/%s on %s; run one now: make retrain-now", DEPLOYMENT, when)
        # limit=1: a run due while another is going waits, so two retrains never share a checkout
        retrain.serve(name=DEPLOYMENT, schedules=[schedule],
                      parameters={"force_scrape": settings.force_scrape}, limit=1,
                      tags=["happysad"], pause_on_shutdown=False, print_starting_message=False)
    except KeyboardInterrupt:
        pass
    finally:
        if server is not None:
            stop_server(server)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
