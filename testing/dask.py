"""A Dask cluster on loopback for tests and benchmarks: a real ``dask scheduler`` and ``dask
worker`` processes (one thread each) started in the repository's folder, stopped with it."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from testing.project import REPO, free_port, stop_process


def _stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:  # all asked at once, then each waited for
        process.terminate()
    for process in processes:
        stop_process(process)


@contextlib.contextmanager
def dask_cluster(workers: int, logs: Path, worker_cwd: Path = REPO) -> Iterator[str]:
    """A scheduler and ``workers`` one-thread workers (started in ``worker_cwd``); yields the
    scheduler's address once every worker has joined."""
    from distributed import Client

    dask = str(Path(sys.executable).with_name("dask"))
    address = f"tcp://127.0.0.1:{free_port()}"
    logs.mkdir(parents=True, exist_ok=True)
    processes: list[subprocess.Popen] = []

    def start(name: str, command: list[str], cwd: Path = REPO) -> None:
        with (logs / f"{name}.log").open("wb") as out:
            processes.append(subprocess.Popen(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                              start_new_session=True))

    try:
        start("scheduler", [dask, "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1],
                            "--no-dashboard", "--no-show"])
        for index in range(workers):
            start(f"worker-{index}", [dask, "worker", address, "--nthreads", "1", "--no-dashboard",
                                      "--local-directory", str(logs / f"worker-{index}")],
                  worker_cwd)
        with Client(address, timeout="60s") as client:
            client.wait_for_workers(workers, timeout=120)
        yield address
    finally:
        _stop(processes[1:])
        _stop(processes[:1])
