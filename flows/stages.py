"""What the flows ask of DVC: the stage order, whether a stage is up to date, running one.

The stage order comes from DVC's own graph of ``dvc.yaml``, so the flow and
``dvc repro`` cannot disagree. A stage runs as ``dvc repro --single-item``, so
DVC alone decides whether it is skipped, restored from the run-cache or run.
Its output is streamed line by line to the caller's logger.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.runtime.lifeline import parent_death_signal

SKIPPED, RESTORED, RAN = "skipped", "restored from run-cache", "ran"
# Kept, but at debug level: TensorFlow's C++ start-up notices, printed before its logging
# can be configured (TF_CPP_MIN_LOG_LEVEL does not reach them), and DVC's hints after every
# stage (git add, autostage, dvc push), which the flow's closing summary says once.
_NOISE = re.compile(r"^(?:[IW]\d{4} \d\d:\d\d:\d\d|WARNING: All log messages before absl|"
                    r"To enable the following instructions|To track the changes with git|"
                    r"To enable auto staging|\s*git add |\s*dvc config core\.autostage|"
                    r"Use `dvc push` to send|(?:Generating|Updating) lock file)")


class StageFailedError(RuntimeError):
    """``dvc repro`` of one stage exited non-zero; the message carries its last lines."""


def stage_order(project: Path) -> list[str]:
    """The stages of ``dvc.yaml`` in an order that runs every dependency first."""
    import networkx as nx
    from dvc.repo import Repo
    from dvc.stage import PipelineStage

    with contextlib.chdir(project), Repo(".") as repo:  # DVC resolves paths against the cwd
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        # Only dvc.yaml's stages: a `.dvc` file (models/production.dvc) is data, not a stage.
        order = nx.lexicographical_topological_sort(graph.reverse(), key=lambda s: s.addressing)
        return [stage.name for stage in order if isinstance(stage, PipelineStage)]


def is_up_to_date(project: Path, stage: str) -> bool:
    """True when DVC would skip ``stage`` (its deps, params and outs match ``dvc.lock``)."""
    from dvc.repo import Repo

    with contextlib.chdir(project), Repo(".") as repo:  # DVC resolves paths against the cwd
        return not repo.status(targets=[stage])


@dataclass(frozen=True)
class StageRun:
    stage: str
    outcome: str  # SKIPPED | RESTORED | RAN
    seconds: float


def stop_process_group(process: subprocess.Popen, grace_s: float = 15.0) -> None:
    """SIGTERM a process started with ``start_new_session`` and all its children, then SIGKILL."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=grace_s)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def run_command(command: list[str], project: Path, logger: logging.Logger | logging.LoggerAdapter,
                timeout_s: float | None = None) -> list[str]:
    """Run ``command`` in ``project``, log each output line as it comes, return all lines.

    The command gets its own process group: on timeout or interrupt the whole group
    is stopped, so no stage keeps running behind a cancelled task.
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           # the stage commands are `python -m pipeline ...`: the same interpreter runs them
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    process = subprocess.Popen(command, cwd=project, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, bufsize=1,
                               start_new_session=True,
                               # and it ends with this process, even after its kill -9 (the
                               # stage DVC runs then ends with DVC: pipeline.runtime.lifeline)
                               preexec_fn=parent_death_signal(signal.SIGTERM))
    timed_out = threading.Event()

    def expire() -> None:
        timed_out.set()
        stop_process_group(process)

    timer = threading.Timer(timeout_s, expire) if timeout_s else None
    if timer:
        timer.daemon = True
        timer.start()
    lines: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip()
            if line:
                lines.append(line)
                logger.log(logging.DEBUG if _NOISE.match(line) else logging.INFO, line)
        process.wait()
    except BaseException:
        stop_process_group(process)
        raise
    finally:
        if timer:
            timer.cancel()
    if timed_out.is_set():
        raise TimeoutError(f"`{' '.join(command)}` ran past its {timeout_s:.0f} s limit and was "
                           "stopped; raise flow.stage_timeout_s in params.yaml if it needs longer")
    if process.returncode != 0:
        tail = " | ".join(lines[-3:]) or "no output"
        raise StageFailedError(f"`{' '.join(command)}` exited with status {process.returncode}: {tail}")
    return lines


def repro_stage(project: Path, stage: str, logger: logging.Logger | logging.LoggerAdapter,
                force: bool = False, timeout_s: float | None = None) -> StageRun:
    """Bring one stage up to date through DVC, as ``dvc repro`` would; say what DVC did."""
    started = time.monotonic()
    if not force and is_up_to_date(project, stage):
        # The same answer `dvc repro` would give, without paying for another DVC start.
        logger.info("Stage '%s' didn't change, skipping", stage)
        return StageRun(stage, SKIPPED, time.monotonic() - started)
    command = [sys.executable, "-m", "dvc", "repro", "--single-item", stage]
    lines = run_command(command + (["--force"] if force else []), project, logger, timeout_s)
    text = "\n".join(lines)
    if f"Running stage '{stage}'" in text:
        outcome = RAN
    elif "skipping run, checking out outputs" in text:
        outcome = RESTORED
    else:
        outcome = SKIPPED
    return StageRun(stage, outcome, time.monotonic() - started)
