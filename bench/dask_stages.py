"""Benchmark of the data stages on a Dask cluster: clean and tfrecords, images/s with one and
two Dask workers against this machine's local process pool, side by side in one run.

The images are 3000 distinct 320 px mosaics of the default demo crawl's faces (as in
bench.data_stages' memory figures). The cluster is real (`dask scheduler` and `dask worker`
processes of one thread each, on loopback, from testing.dask); the local pool runs before and
after it (their mean is the baseline). On one 2-core machine, two Dask workers share the cores
the local pool uses, so the figure to read is the scaling from one worker to two and Dask's
cost against the local pool, not a speed-up: N machines give at most N x the one-worker rate.

Run: ``uv run python -m bench.dask_stages [--images N]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from bench import print_table
from bench.crawl import impolite
from bench.data_stages import synthetic_raw
from pipeline.config.params import load_params
from pipeline.runtime.cluster import DASK_ADDRESS
from testing.dask import dask_cluster

Row = tuple[str, str, str]
REPO = Path(__file__).resolve().parents[1]


def _rates(raw: Path, out: Path, images: int) -> tuple[float, float]:
    """clean's and tfrecords' images/s on ``raw``, in this environment."""
    from pipeline.stages.clean import clean
    from pipeline.stages.split import split
    from pipeline.stages.tfrecords import tfrecords

    params = load_params(REPO / "params.yaml")
    started = time.perf_counter()
    clean(raw, out / "clean", params.clean)
    clean_s = time.perf_counter() - started
    split(out / "clean" / "images.jsonl", out / "split", params.split)
    started = time.perf_counter()
    tfrecords(out / "split" / "split.jsonl", raw, out / "tfrecords", params.tfrecords)
    return images / clean_s, images / (time.perf_counter() - started)


def rows(work: Path, images: int) -> list[Row]:
    from pipeline.stages.clean import clean
    from pipeline.stages.scrape import scrape

    params = load_params(REPO / "params.yaml")
    fast = impolite(params, 16)
    scrape(fast.scrape, params.demo_site, work / "raw", work / "reports", work / "site")
    clean(work / "raw", work / "clean", params.clean)
    synthetic_raw(work / "raw", work / "big", images)
    os.environ.pop(DASK_ADDRESS, None)
    local = [_rates(work / "big", work / "local-1", images)]
    rates = {}
    for workers in (1, 2):
        with dask_cluster(workers, work / f"dask-{workers}") as address:
            os.environ[DASK_ADDRESS] = address
            try:
                rates[workers] = _rates(work / "big", work / f"run-dask-{workers}", images)
            finally:
                os.environ.pop(DASK_ADDRESS)
    local.append(_rates(work / "big", work / "local-2", images))
    base = [sum(r[i] for r in local) / len(local) for i in (0, 1)]
    out = []
    for index, stage in enumerate(("clean", "tfrecords")):
        out.append((f"{stage}, local process pool ({os.cpu_count()} cores)", f"{base[index]:.0f} img/s",
                    f"baseline; {local[0][index]:.0f} before the cluster runs, {local[1][index]:.0f} after"))
        for workers in (1, 2):
            rate = rates[workers][index]
            scaling = f"; x{rate / rates[1][index]:.2f} of one worker" if workers == 2 else ""
            out.append((f"{stage}, Dask, {workers} worker{'s' * (workers > 1)} (1 thread each)",
                        f"{rate:.0f} img/s", f"x{rate / base[index]:.2f} of the local pool{scaling}"))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dask_stages", description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="happysad-bench-dask-") as work:
        print_table(f"data stages on Dask ({args.images} images of 320 px)", rows(Path(work), args.images))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
