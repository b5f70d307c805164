"""Benchmark of the DVC remotes: push and pull of the demo site's images through an S3 bucket
against a local folder.

The demo site (params.yaml's demo_site: every face and planted fault) is generated into a
fresh git + DVC repository and `dvc add`ed; then, alternating so machine noise hits both alike,
each remote gets a `dvc push` from that repository and a `dvc pull` into an empty cache and
workspace. The S3 bucket is a real S3-API server on loopback (moto in server mode, as in the
tests), so the figure is the cost of DVC's S3 client and the protocol, not of a network.

Run: ``uv run python -m bench.remote [--repeats N]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import print_table
from testing.project import GIT, REPO
from testing.s3 import CREDENTIALS, s3_server

Row = tuple[str, str, str]


def _run(command: list[str], cwd: Path, env: dict[str, str]) -> None:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)}: {done.stderr[-2000:]}")


def _timed(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    _run(command, cwd, env)
    return time.perf_counter() - started


def _project(work: Path, env: dict[str, str]) -> tuple[Path, int, int]:
    """A git + DVC repository holding the demo site: (its path, files, bytes)."""
    from demo.site import generate_site
    from pipeline.config.params import load_params

    project = work / "project"
    project.mkdir()
    generate_site(project / "demo_site", load_params(REPO / "params.yaml").demo_site)
    _run(GIT + ["init", "-q"], project, env)
    _run([sys.executable, "-m", "dvc", "init", "-q"], project, env)
    _run([sys.executable, "-m", "dvc", "add", "-q", "demo_site"], project, env)
    files = [p for p in (project / "demo_site").rglob("*") if p.is_file()]
    return project, len(files), sum(p.stat().st_size for p in files)


def rows(work: Path, repeats: int) -> list[Row]:
    env = {**os.environ, **CREDENTIALS}
    dvc = [sys.executable, "-m", "dvc"]
    project, files, size = _project(work, env)
    times: dict[str, list[float]] = {k: [] for k in ("folder push", "folder pull", "s3 push", "s3 pull")}
    with s3_server("happysad-bench", work / "moto.log") as endpoint:
        _run(dvc + ["remote", "add", "folder", str(work / "folder-0")], project, env)
        _run(dvc + ["remote", "add", "s3", "s3://happysad-bench/cache-0"], project, env)
        _run(dvc + ["remote", "modify", "s3", "endpointurl", endpoint], project, env)
        for attempt in range(repeats):
            # an empty remote each time, so each push sends everything
            _run(dvc + ["remote", "modify", "folder", "url", str(work / f"folder-{attempt}")], project, env)
            _run(dvc + ["remote", "modify", "s3", "url", f"s3://happysad-bench/cache-{attempt}"],
                 project, env)
            for remote in ("folder", "s3"):
                times[f"{remote} push"].append(_timed(dvc + ["push", "-q", "-r", remote], project, env))
                shutil.rmtree(project / ".dvc" / "cache")
                shutil.rmtree(project / "demo_site")
                times[f"{remote} pull"].append(_timed(dvc + ["pull", "-q", "-r", remote], project, env))
    med = {k: statistics.median(v) for k, v in times.items()}
    megabytes = size / 1e6
    return [
        (f"push, local folder ({files} files, {megabytes:.0f} MB)", f"{med['folder push']:.2f} s",
         "baseline"),
        ("push, S3 bucket on loopback", f"{med['s3 push']:.2f} s",
         f"x{med['s3 push'] / med['folder push']:.1f} of the folder; {megabytes / med['s3 push']:.1f} MB/s"),
        ("pull, local folder", f"{med['folder pull']:.2f} s", "baseline; empty cache and workspace"),
        ("pull, S3 bucket on loopback", f"{med['s3 pull']:.2f} s",
         f"x{med['s3 pull'] / med['folder pull']:.1f} of the folder; {megabytes / med['s3 pull']:.1f} MB/s"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.remote", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="happysad-bench-remote-") as work:
        print_table(f"DVC remotes ({args.repeats} runs each, medians)", rows(Path(work), args.repeats))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
