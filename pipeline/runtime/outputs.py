"""What the stages do alike with their files: read their input records as JSON lines, write
metrics and records, and replace their output folder only once the new one is complete."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from pipeline.runtime.errors import UserError
from pipeline.runtime.files import write_atomic

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


@contextmanager
def replacing_dir(out_dir: Path) -> Iterator[Path]:
    """A sibling folder to write into; it replaces ``out_dir`` only if the block completes,
    so a crash or bad input never leaves half an output under the real name. For a folder
    that is the stage's output as a whole (a DVC out); else use ``replacing_files``."""
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except OSError:
        # a full disk gets its space back; after other failures the partial folder stays to
        # be looked at (the next run starts it afresh)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)


@contextmanager
def replacing_files(out_dir: Path) -> Iterator[Path]:
    """A sibling folder to write into; if the block completes, each file it wrote replaces its
    namesake in ``out_dir`` (one atomic rename each), and nothing else there is touched: the
    folder can hold files that are not this stage's, such as the .gitignore git tracks."""
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except OSError:  # as replacing_dir: a full disk gets its space back
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    out_dir.mkdir(parents=True, exist_ok=True)
    for written in sorted(tmp.iterdir()):
        os.replace(written, out_dir / written.name)
    tmp.rmdir()


def write_metrics(path: Path, metrics: dict[str, object]) -> None:
    """A stage's headline numbers, the file `dvc metrics show` and `dvc exp show` read: a
    handful of flat keys, so the table stays readable; details go to a report beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(metrics, indent=2) + "\n")


def write_jsonl(path: Path, rows: Iterable[dict[str, object]]) -> None:
    write_atomic(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
