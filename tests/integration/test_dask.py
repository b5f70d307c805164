"""The data stages' per-image work on a real Dask cluster (a scheduler and two workers on
loopback): the outputs are those of the local run, byte for byte, and both workers worked."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config.clean import CleanParams
from pipeline.config.params import Params
from pipeline.runtime.workers import DASK_ADDRESS
from testing.dask import dask_cluster


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


@pytest.mark.slow  # the client tries for 10 s
def test_a_dask_address_nobody_answers_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.runtime.errors import UserError
    from pipeline.runtime.workers import parallel_map

    monkeypatch.setenv(DASK_ADDRESS, "tcp://127.0.0.1:9")
    with pytest.raises(UserError, match="no Dask scheduler answers"):
        list(parallel_map(abs, [1, 2], 0, "test"))
