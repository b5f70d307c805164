"""The folder source: ``<path>/<class>/*`` imported into data/raw as if scraped.

Same store, same manifest, same content addressing as a crawl. Each file is
recorded under the URL ``file:<path>/<class>/<name>`` (the path as params.yaml
gives it, so the manifest names no machine's folders); a file already recorded
under that URL is skipped, so a re-import adds only new names.

The folder is read by the rules of :mod:`pipeline.runtime.folders`: regular files
inside it only, a link that leads out refused and counted, and what DVC cannot hash
(a name that is not UTF-8, a dangling link, a FIFO or device) named in one line
first; the Prefect flow checks it before DVC looks.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from pipeline.config.scrape import ScrapeParams
from pipeline.contracts.raw import RawRecord, RawStore
from pipeline.runtime.files import read_regular
from pipeline.runtime.folders import check_folder, files_within

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FolderImport:
    stored: int
    new_files: int
    already_had: int
    over_limit: int
    too_large: int
    links_refused: int = 0  # symbolic links that lead out of the folder


def check_import_folders(params: ScrapeParams, root: Path = Path(".")) -> None:
    """:func:`check_folder` over every folder source of ``params``, enabled or not (each is
    a DVC dep all the same), with paths relative to the project ``root``."""
    for source in params.sources.values():
        if source.kind == "folder":
            check_folder(root / source.path)


def _files(root: Path, folder: Path, path: str) -> Iterator[tuple[Path | None, str]]:
    """The regular files of one class folder, each with its ``file:`` URL; a link leading out
    of ``root`` comes as ``(None, url)``."""
    for file, readable in files_within(root, folder):
        url = f"file:{PurePosixPath(path) / file.relative_to(root).as_posix()}"
        yield (file if readable else None), url


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
