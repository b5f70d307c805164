"""Benchmark of the Prefect retrain flow's overhead over `dvc repro`, when nothing is out of date.

In a fresh copy of the project on the tiny demo site (the figure is orchestration
cost, which does not grow with the images), the DAG is run once, then, in
alternation, `dvc repro` and the flow, each a no-op: every stage is cached.
The flow is timed against a running local Prefect server (as under `make serve`)
and in Prefect's temporary-server mode (as `make run` without a server); with
only the stage tasks (`--no-promote --no-record`, the part `dvc repro` also does)
and as a whole (the promote step finds the model unchanged, so scores nothing,
and, since no output changed, no DVC experiment is saved).

A no-op scheduled retrain (``--force-scrape``, as the deployment runs it: the crawl
finds nothing new, every later stage is skipped and no DVC experiment is
recorded) is timed against a bare ``dvc status`` too.

Run: ``uv run python -m bench.flow [--repeats N]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import print_table

Row = tuple[str, str, str]


def _timed(command: list[str], project: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return seconds


def rows(work: Path, repeats: int) -> list[Row]:
    from flows.server import api_url, free_port, start_server, stop_server
    from testing.project import TINY_SITE, copy_project, tiny_params, tool_env

    project = copy_project(work / "project", tiny_params(TINY_SITE))
    home = work / "prefect-home"
    port = free_port()
    server = start_server(home, port, home / "server.log")
    try:
        env = {**tool_env(), "PREFECT_HOME": str(home)}
        served = {**env, "PREFECT_API_URL": api_url(port)}
        flow = [sys.executable, "-m", "flows.retrain"]
        _timed(flow, project, served)  # the first, real run
        times: dict[str, list[float]] = {k: [] for k in ("status", "dvc", "served", "served_all",
                                                         "scheduled", "temporary")}
        for _ in range(repeats):  # alternate, so machine noise hits each alike
            times["status"].append(_timed([sys.executable, "-m", "dvc", "status"], project, env))
            times["dvc"].append(_timed([sys.executable, "-m", "dvc", "repro"], project, env))
            # As a scheduled run: crawl again (nothing new), skip the rest, promote, no experiment.
            times["scheduled"].append(_timed(flow + ["--force-scrape"], project, served))
            times["served"].append(_timed(flow + ["--no-promote", "--no-record"], project, served))
            times["served_all"].append(_timed(flow, project, served))
            no_server = {k: v for k, v in env.items() if k != "PREFECT_API_URL"}
            times["temporary"].append(_timed(flow + ["--no-promote", "--no-record", "--port",
                                                     str(free_port())], project, no_server))
    finally:
        stop_server(server)
    med = {k: statistics.median(v) for k, v in times.items()}
    spread = {k: f"{min(v):.1f}-{max(v):.1f} s" for k, v in times.items()}
    return [
        ("bare `dvc status`", f"{med['status']:.1f} s", f"baseline; {spread['status']} over {repeats} runs"),
        ("no-op `dvc repro`", f"{med['dvc']:.1f} s",
         f"x{med['dvc'] / med['status']:.2f} of `dvc status`; {spread['dvc']}"),
        ("no-op scheduled retrain (--force-scrape), running server", f"{med['scheduled']:.1f} s",
         f"x{med['scheduled'] / med['status']:.2f} of `dvc status`: the crawl runs again, every "
         f"later stage is skipped, no experiment is recorded; {spread['scheduled']}"),
        ("no-op flow, stage tasks, running server", f"{med['served']:.1f} s",
         f"overhead {med['served'] - med['dvc']:+.1f} s, x{med['served'] / med['dvc']:.2f} "
         f"(target <= +10 s); {spread['served']}"),
        ("no-op flow, stage tasks, temporary server", f"{med['temporary']:.1f} s",
         f"overhead {med['temporary'] - med['dvc']:+.1f} s (starts a server each run); "
         f"{spread['temporary']}"),
        ("no-op flow + promote + experiment, running server", f"{med['served_all']:.1f} s",
         f"overhead {med['served_all'] - med['dvc']:+.1f} s (promote sees the same model file; "
         f"nothing changed, so no experiment is saved); {spread['served_all']}"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.flow", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    with tempfile.TemporaryDirectory(prefix="happysad-bench-flow-") as work:
        print_table("Prefect flow overhead (tiny demo site, everything cached)",
                    rows(Path(work), args.repeats))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
