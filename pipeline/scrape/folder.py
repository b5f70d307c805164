"""The folder source: ``<path>/<class>/*`` imported into data/raw as if scraped.

Same store, same manifest, same content addressing as a crawl. Each file is
recorded under the URL ``file:<path>/<class>/<name>`` (the path as params.yaml
gives it, so the manifest names no machine's folders); a file already recorded
under that URL is skipped, so a re-import adds only new names.

Only regular files inside the folder are read. A symbolic link is followed only
while it stays inside the folder; one that leads out (to ``/etc``, to another
project) is refused and counted, so nothing from elsewhere reaches data/raw and,
through ``dvc push``, the remote. The folder is a DVC dep of the scrape stage, so
DVC hashes everything in it: a name that is not UTF-8 makes DVC fail and a FIFO or
device makes it hang. :func:`check_folder` refuses those first, with one line
naming the file; the Prefect flow calls it before DVC looks.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from pipeline.config.scrape import ScrapeParams
from pipeline.contracts.raw import RawRecord, RawStore
from pipeline.runtime.errors import UserError
from pipeline.runtime.files import display_path, kind_of, read_regular

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FolderImport:
    stored: int
    new_files: int
    already_had: int
    over_limit: int
    too_large: int
    links_refused: int = 0  # symbolic links that lead out of the folder


def check_folder(root: Path) -> None:
    """A one-line ``UserError`` for the first entry under ``root`` that DVC cannot hash: a name
    that is not UTF-8, or a FIFO, socket or device (DVC would wait on it forever), also at
    the end of a symbolic link. Links are not followed into folders."""
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
            except OSError:
                continue  # a dangling link: DVC skips it too
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise UserError(f"{display_path(path)}: {kind_of(mode)}, not a file; DVC would wait "
                                "on it forever while hashing the folder; remove it")


def check_import_folders(params: ScrapeParams, root: Path = Path(".")) -> None:
    """:func:`check_folder` over every folder source of ``params``, enabled or not (each is
    a DVC dep all the same), with paths relative to the project ``root``."""
    for source in params.sources.values():
        if source.kind == "folder":
            check_folder(root / source.path)


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _files(root: Path, folder: Path, path: str) -> Iterator[tuple[Path | None, str]]:
    """The regular files of one class folder, hidden ones left out, each with its ``file:``
    URL; a link leading out of ``root`` comes as ``(None, url)``."""
    real_root = root.resolve()
    for place, dirs, names in os.walk(folder):  # links to folders are not walked into
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            file = Path(place) / name
            if name.startswith("."):
                continue
            url = f"file:{PurePosixPath(path) / file.relative_to(root).as_posix()}"
            if file.is_symlink() and not _within(file.resolve(), real_root):
                yield None, url
            elif file.is_file():  # a regular file, or a link to one inside the folder
                yield file, url
        for name in dirs:  # links among the folders: refused when they lead out
            linked = Path(place) / name
            if linked.is_symlink() and not _within(linked.resolve(), real_root):
                yield None, f"file:{PurePosixPath(path) / linked.relative_to(root).as_posix()}"


def _read_within(file: Path, max_bytes: int, url: str) -> bytes | None:
    """The file's bytes, or None (with a warning) when it is over ``max_bytes``."""
    try:
        return read_regular(file, max_bytes)
    except OSError as err:
        if err.errno != errno.EFBIG:
            raise
        logger.warning("not imported (over scrape.crawl.max_bytes, %s): %s", err.strerror, url)
        return None


def _store(store: RawStore, data: bytes, record: RawRecord) -> bool:
    """Store ``data`` and append ``record`` with what the bytes say; True for a new file."""
    stored_path, sniffed, is_new = store.store(record.label, data)
    store.append(replace(record, sha256=Path(stored_path).stem, path=stored_path,
                         format=sniffed.format, width=sniffed.width, height=sniffed.height,
                         fetched_at=datetime.now(UTC).isoformat(timespec="seconds")))
    return is_new


def import_folder(source: str, path: str, labels: list[str], raw_dir: Path, *, max_images: int,
                  max_bytes: int, licence: str | None = None, attribution: str | None = None,
                  progress_every_s: float = 5.0) -> FolderImport:
    """Copy every file under ``path/<label>/`` into ``raw_dir``, recording each."""
    root = Path(path)
    check_folder(root)
    store = RawStore(raw_dir)
    known = store.seen()
    stored = new = had = over = large = refused = 0
    last_log = time.monotonic()
    for label in labels:
        folder = root / label
        if not folder.is_dir():
            continue
        prefix = f"file:{PurePosixPath(path) / label}/"
        # max_images is on the folder, not on one run: earlier imports count.
        taken = sum(1 for lab, url in known if lab == label and url.startswith(prefix))
        for file, url in _files(root, folder, path):
            if file is None:
                refused += 1
                logger.warning("not imported (a link out of %s): %s", path, url)
                continue
            if (label, url) in known:
                had += 1
                continue
            if taken >= max_images:
                over += 1
                continue
            data = _read_within(file, max_bytes, url)
            if data is None:
                large += 1
                continue
            is_new = _store(store, data, RawRecord(
                url=url, final_url=url, page_url=f"file:{PurePosixPath(path) / label}",
                source=source, query="", label=label, sha256="", path="", bytes=len(data),
                content_type="", format=None, width=None, height=None, licence=licence,
                attribution=attribution, fetched_at=""))
            known.add((label, url))
            taken += 1
            stored += 1
            new += is_new
            if time.monotonic() - last_log >= progress_every_s:
                last_log = time.monotonic()
                logger.info("folder %s: %d files imported so far", path, stored)
    if stored or had or refused:
        logger.info("folder %s: %d imported (%d new files), %d already had, %d over the limit, "
                    "%d links out of the folder refused", path, stored, new, had, over, refused)
    return FolderImport(stored, new, had, over, large, refused)
