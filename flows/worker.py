"""``make worker POOL=gpu``: a worker of a process work pool that never leaves its run behind.

Prefect's ``prefect worker start``, stopped by a signal to its process group (Ctrl-C in a
script, a service manager's stop), ends its flow run's process with it, and nothing gives the
run a final state: it stays Running, and with the deployment's one slot
(``concurrency_limit=1``) the next run waits. This command runs the same worker in a session of
its own, named after this machine, and owns its stop:

- Told to stop (SIGINT, SIGTERM), it asks each flow run the worker is running to stop
  (SIGTERM, which Prefect's engine reports as Crashed), waits ``flow.worker_stop_s`` at most,
  then stops the worker; a run still not final is marked Crashed through the API. Crashed
  frees the deployment's slot, so the next run starts on the next worker that asks.
- The worker dying on its own ends this command, with the same clean-up.
- On start, the runs of the pool that an earlier worker of this machine left going, whose
  process is gone (``kill -9``, a reboot), are marked Crashed.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from flows.deploy import CHECKOUT
from flows.server import cli_logging, is_up
from pipeline.config.params import load_params
from pipeline.runtime.errors import UserError
from pipeline.runtime.lifeline import parent_death_signal

NAME_LABEL = "prefect.worker.name"  # the label Prefect's worker gives each run it submits
GOING = ("PENDING", "RUNNING", "CANCELLING")  # the state types a run a worker owns can be in
logger = logging.getLogger("happysad.worker")


def worker_name(pid: int | None = None) -> str:
    """This machine's worker name: the host and the pid of this command, so that a worker
    started later on the same machine can tell whether the one that took a run still lives."""
    return f"happysad@{socket.gethostname()}:{pid or os.getpid()}"


def _owner(name: str) -> tuple[str, int] | None:
    """The host and pid in a name ``worker_name`` gave, or None for another worker's name."""
    if not name.startswith("happysad@") or ":" not in name:
        return None
    host, _, pid = name.removeprefix("happysad@").rpartition(":")
    return (host, int(pid)) if pid.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def going_runs(pool: str, owned: Callable[[str], bool]) -> list:
    """The runs of ``pool`` that are not final and whose worker name satisfies ``owned``."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        WorkPoolFilter,
        WorkPoolFilterName,
    )
    from prefect.client.schemas.objects import StateType

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(
                any_=[StateType(kind) for kind in GOING]))),
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool])))
    return [run for run in runs if owned((run.labels or {}).get(NAME_LABEL, ""))]


def crash(runs: list, why: str) -> None:
    """Mark ``runs`` Crashed with ``why`` (forced: nobody else will report them any more); a run
    being cancelled is marked Cancelled, as asked."""
    from prefect import get_client
    from prefect.states import Cancelled, Crashed

    with get_client(sync_client=True) as client:
        for run in runs:
            current = client.read_flow_run(run.id)
            if current.state is None or current.state.is_final():
                continue
            final = Cancelled if current.state.is_cancelling() else Crashed
            client.set_flow_run_state(run.id, final(message=why), force=True)
            logger.info("flow run %r marked %s: %s", run.name, final.__name__, why)


def reap_left_behind(pool: str) -> None:
    """Crash the going runs of ``pool`` whose worker was on this machine and is gone."""
    host = socket.gethostname()

    def left_behind(name: str) -> bool:
        owner = _owner(name)
        return owner is not None and owner[0] == host and not _alive(owner[1])

    runs = going_runs(pool, left_behind)
    if runs:
        crash(runs, f"its worker on {host} stopped without finishing it")


class Worker:
    """``prefect worker start`` in a session of its own, stopped by ``stop`` with its runs."""

    def __init__(self, pool: str, checkout: Path, stop_s: float) -> None:
        self.pool, self.stop_s, self.name = pool, stop_s, worker_name()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process",
             "--limit", "1", "--name", self.name],
            env={**os.environ, CHECKOUT: str(checkout)}, start_new_session=True,
            preexec_fn=parent_death_signal(signal.SIGTERM))  # it ends with this command

    def ours(self, name: str) -> bool:
        return name == self.name

    def _run_processes(self, runs: list) -> list[int]:
        """The pids of ``runs``' processes, those of this worker's session only."""
        pids = []
        for run in runs:
            try:
                pid = int(run.infrastructure_pid or "")
                if os.getsid(pid) == self.process.pid:
                    pids.append(pid)
            except (ValueError, ProcessLookupError, PermissionError):
                continue
        return pids

    def _signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)

    def stop(self, why: str) -> None:
        """Stop the runs of this worker (Prefect's engine reports them Crashed), then the worker;
        crash through the API what is still not final. A server gone meanwhile is one line:
        the worker and its runs are stopped all the same."""
        try:
            runs = going_runs(self.pool, self.ours)
        except Exception as err:  # noqa: BLE001 - httpx, Prefect's: the server is unreachable
            logger.warning("the Prefect server did not answer (%s); stopping the worker and its "
                           "processes without marking its runs", type(err).__name__)
            runs = []
        for pid in self._run_processes(runs):
            os.kill(pid, signal.SIGTERM)
        if runs:
            logger.info("stopping %d flow run(s) of this worker: %s", len(runs), why)
            _wait_gone(self._run_processes, runs, self.stop_s)
        self._signal_group(signal.SIGINT)  # the worker stops asking for runs and ends
        try:
            self.process.wait(timeout=self.stop_s)
        except subprocess.TimeoutExpired:
            self._signal_group(signal.SIGKILL)
            self.process.wait()
        self._signal_group(signal.SIGKILL)  # whatever of the session is left
        try:
            left = going_runs(self.pool, self.ours)
            if left:
                crash(left, why)
        except Exception as err:  # noqa: BLE001 - the server is unreachable
            logger.warning("the Prefect server did not answer (%s): a run of this worker may "
                           "still show Running; the next worker here marks it Crashed",
                           type(err).__name__)


def _wait_gone(pids_of: Callable[[list], list[int]], runs: list, seconds: float) -> None:
    import time

    deadline = time.monotonic() + seconds
    while pids_of(runs) and time.monotonic() < deadline:
        time.sleep(0.5)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m flows.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--pool", required=True, help="the process work pool to take runs from")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cli_logging(args.verbose)
    url = os.environ.get("PREFECT_API_URL", "")
    try:
        stop_s = load_params(args.params).flow.worker_stop_s
        if not url:
            raise UserError("PREFECT_API_URL is not set: give the server the deployment is on "
                            "(make worker sets it to this machine's `make serve`)")
        if not is_up(url):
            raise UserError(f"no Prefect server answers at PREFECT_API_URL={url}; start it, or "
                            "point PREFECT_API_URL at the team's server")
        reap_left_behind(args.pool)
    except UserError as err:
        sys.stderr.write(f"worker: error: {err}\n")
        return 2
    stopped: list[str] = []

    def on_signal(number: int, _frame: object) -> None:
        if not stopped:
            stopped.append(signal.Signals(number).name)
            logger.info("%s: stopping the worker and its runs (at most %.0f s)",
                        stopped[0], 2 * stop_s)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    worker = Worker(args.pool, Path.cwd(), stop_s)
    logger.info("worker %s takes runs of pool %r into %s; Ctrl-C stops it and its run",
                worker.name, args.pool, Path.cwd())
    while not stopped and worker.process.poll() is None:
        try:
            worker.process.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            continue
    if stopped:
        worker.stop(f"its worker {worker.name} was stopped ({stopped[0]})")
        return 0
    code = worker.process.returncode
    worker.stop(f"its worker {worker.name} exited with status {code}")
    logger.error("the Prefect worker exited with status %s", code)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
