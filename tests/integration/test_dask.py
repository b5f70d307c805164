"""The data stages' per-image work on a real Dask cluster (a scheduler and two workers on
loopback): the outputs are those of the local run, byte for byte, and both workers worked."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from pipeline.config.clean import CleanParams
from pipeline.config.params import Params
from pipeline.runtime.cluster import DASK_ADDRESS, WAIT_ENV, checked_address
from pipeline.runtime.errors import UserError
from pipeline.runtime.workers import parallel_map
from testing.dask import dask_cluster
from testing.sites import LoopbackSite


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_clean_and_tfrecords_on_a_dask_cluster_write_what_they_write_locally(
        tiny_raw: Path, tiny_clean_params: CleanParams, repo_params: Params, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from distributed import Client

    from pipeline.config.split import SplitParams
    from pipeline.stages.clean import clean
    from pipeline.stages.split import split
    from pipeline.stages.tfrecords import tfrecords

    records = repo_params.tfrecords.model_copy(update={"image_size": 32, "workers": 1})

    def run(out: Path) -> None:
        clean(tiny_raw, out / "clean", tiny_clean_params)
        split(out / "clean" / "images.jsonl", out / "split",
              SplitParams(seed=3, fractions={"train": 0.5, "val": 0.25, "test": 0.25}))
        tfrecords(out / "split" / "split.jsonl", tiny_raw, out / "tfrecords", records)

    run(tmp_path / "local")
    with dask_cluster(2, tmp_path / "dask") as address:
        monkeypatch.setenv(DASK_ADDRESS, address)
        run(tmp_path / "dask-run")
        with Client(address) as client:
            executed = client.run(lambda dask_worker: dask_worker.state.executed_count)
    assert len(executed) == 2 and all(count > 0 for count in executed.values()), executed
    for part in ("clean", "tfrecords"):
        assert _files(tmp_path / "dask-run" / part) == _files(tmp_path / "local" / part), part


@pytest.mark.slow  # waits out a 2 s greeting; imports the tune flow
def test_an_address_that_is_no_dask_scheduler_is_one_line_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: `banana` gave 61 lines and two tracebacks in 20 s; an HTTP server's address hung
    for ever with no line."""
    monkeypatch.setenv(WAIT_ENV, "2")
    for address, said in [("banana", "is not a Dask scheduler's address: give it as tcp://"),
                          ("http://127.0.0.1:80", "is not a Dask scheduler's address"),
                          ("tcp://127.0.0.1:9", "no Dask scheduler answers"),
                          ("tcp://127.0.0.1:99999", "is not a Dask scheduler's address")]:
        monkeypatch.setenv(DASK_ADDRESS, address)
        with pytest.raises(UserError, match=said):
            list(parallel_map(abs, [1, 2], 0, "test"))
    with LoopbackSite() as site:  # an HTTP server: it accepts, and waits for a request
        monkeypatch.setenv(DASK_ADDRESS, f"tcp://{site.host_port}")
        started = time.monotonic()
        with pytest.raises(UserError, match="it is not a Dask scheduler .it said nothing in 2 s"):
            list(parallel_map(abs, [1, 2], 0, "test"))
        assert time.monotonic() - started < 30
        # the tune flow's door to Dask (tune.dask_address, --dask-address): the same lines
        from flows.tune import _task_runner

        with pytest.raises(UserError, match="tune.dask_address='banana' is not a Dask scheduler's"):
            _task_runner(1, "banana", "tune.dask_address")
        assert checked_address("inproc://192.0.2.2/13608/1") == "inproc://192.0.2.2/13608/1"
        with pytest.raises(UserError, match="--dask-address=tcp://.*it is not a Dask scheduler"):
            _task_runner(1, f"tcp://{site.host_port}", "--dask-address")


@pytest.mark.slow
def test_a_worker_outside_a_checkout_and_a_cluster_whose_workers_died_are_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: a worker started elsewhere blamed data/raw ("restore it with dvc checkout");
    with every worker dead the stage waited for ever, saying nothing."""
    from distributed import Client

    monkeypatch.setenv(WAIT_ENV, "4")
    with dask_cluster(1, tmp_path / "elsewhere", worker_cwd=tmp_path) as address:
        monkeypatch.setenv(DASK_ADDRESS, address)
        with pytest.raises(UserError, match=f"runs in {tmp_path}, which is not a checkout of "
                                            "this project .no dvc.yaml, params.yaml, pipeline"):
            list(parallel_map(abs, list(range(40)), 0, "test"))
    with dask_cluster(1, tmp_path / "dask") as address:
        monkeypatch.setenv(DASK_ADDRESS, address)
        with Client(address) as client:
            pids = client.run(os.getpid)
        results = parallel_map(time.sleep, [0.05] * 64, 0, "test")
        next(results)
        for pid in pids.values():  # the worker and its nanny, which would start another
            os.killpg(os.getpgid(pid), signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(UserError, match=r"no Dask worker for 4 s \(\d+ of 64 images done\); "
                                            "start workers in this checkout"):
            list(results)
        assert time.monotonic() - started < 60
