"""Folders people fill by hand (``data/import``, ``data/pretrain``): what DVC can hash, and the
files a stage may read from them.

Both folders are DVC deps, so DVC hashes everything in them before the stage runs: a name
that is not UTF-8 or a dangling link makes it fail on the whole stage, and a FIFO or a device
makes it wait for ever. :func:`check_folder` names the first such entry in one line; the
Prefect flow calls it before DVC looks, and each stage again before it reads.

Only regular files inside a folder are read (:func:`files_within`). A symbolic link is
followed only while it stays inside; one that leads out (to ``/etc``, to another project's
faces) is refused and reported, so nothing from elsewhere reaches a dataset and, through
``dvc push``, the remote. Links to folders are not walked into.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

from pipeline.runtime.errors import UserError
from pipeline.runtime.files import display_path, kind_of


def check_folder(root: Path) -> None:
    """A one-line ``UserError`` for the first entry under ``root`` that DVC cannot hash: a name
    that is not UTF-8, a link to nothing, or a FIFO, socket or device (DVC would wait on it
    forever), also at the end of a symbolic link. Links are not followed into folders."""
    if not root.is_dir():
        return
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in [*dirs, *sorted(files)]:
            path = Path(folder) / name
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:
                raise UserError(f"{display_path(path)}: the name is not UTF-8, which DVC cannot hash "
                                "(it fails on the whole stage); rename the file, e.g. with "
                                "`convmv -f latin1 -t utf-8`") from None
            try:
                mode = path.stat().st_mode  # through a link: what DVC would open
            except OSError as err:
                raise UserError(f"{display_path(path)}: a link to {os.readlink(path)!r}, which "
                                f"{err.strerror.lower() if err.strerror else 'cannot be read'}; "
                                "DVC fails on the whole stage when it hashes the folder; remove "
                                "the link") from None
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise UserError(f"{display_path(path)}: {kind_of(mode)}, not a file; DVC would wait "
                                "on it forever while hashing the folder; remove it")


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def files_within(root: Path, folder: Path) -> Iterator[tuple[Path, bool]]:
    """The regular files under ``folder`` (a folder of ``root``), hidden ones left out, in a
    stable order, each with whether it may be read: ``(path, False)`` for a link, to a file or
    a folder, that leads out of ``root``."""
    real_root = root.resolve()
    for place, dirs, names in os.walk(folder):  # links to folders are not walked into
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            file = Path(place) / name
            if name.startswith("."):
                continue
            if file.is_symlink() and not _within(file.resolve(), real_root):
                yield file, False
            elif file.is_file():  # a regular file, or a link to one inside the folder
                yield file, True
        for name in dirs:  # links among the folders: refused when they lead out
            linked = Path(place) / name
            if linked.is_symlink() and not _within(linked.resolve(), real_root):
                yield linked, False
