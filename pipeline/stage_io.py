"""What the data stages do alike: read their input records, spread work over
processes, and replace their output folder only once the new one is complete."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from tqdm import tqdm

from pipeline.errors import UserError

Job = TypeVar("Job")
Result = TypeVar("Result")


def read_records(path: Path, keys: tuple[str, ...], stage: str, kind: str) -> list[dict[str, str]]:
    """The ``keys`` of each JSON line of a stage's output, or a one-line error naming the line."""
    if not path.exists():
        raise UserError(f"{path}: not found; run the {stage} stage first (dvc repro {stage})")
    rows = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            try:
                row = json.loads(line)
                rows.append({k: str(row[k]) for k in keys})
            except (ValueError, KeyError, TypeError) as err:
                raise UserError(f"{path}:{number}: not a {kind} record ({err}); "
                                f"rerun the {stage} stage") from None
    return rows


def parallel_map(fn: Callable[[Job], Result], jobs: list[Job], workers: int,
                 desc: str) -> Iterator[Result]:
    """``map(fn, jobs)`` in order, over ``workers`` processes (0: one per core), with a bar.

    Workers are spawned, not forked: the caller may have TensorFlow's threads running.
    """
    workers = workers or os.cpu_count() or 1
    bar = dict(total=len(jobs), desc=desc, unit="img", disable=None)
    if workers == 1 or len(jobs) < 64:
        yield from tqdm(map(fn, jobs), **bar)
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield from tqdm(pool.map(fn, jobs, chunksize=16), **bar)


@contextmanager
def replacing_dir(out_dir: Path) -> Iterator[Path]:
    """A sibling folder to write into; it replaces ``out_dir`` only if the block completes,
    so a crash or bad input never leaves half an output under the real name."""
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    yield tmp
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)


def write_jsonl(path: Path, rows: Iterable[dict[str, object]]) -> None:
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows), encoding="utf-8")
