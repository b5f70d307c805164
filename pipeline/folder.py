"""The folder source: ``<path>/<class>/*`` imported into data/raw as if scraped.

Same store, same manifest, same content addressing as a crawl. Each file is
recorded under the URL ``file:<path>/<class>/<name>`` (the path as params.yaml
gives it, so the manifest names no machine's folders); a file already recorded
under that URL is skipped, so a re-import adds only new names.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from pipeline.raw import RawRecord, RawStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FolderImport:
    stored: int
    new_files: int
    already_had: int
    over_limit: int
    too_large: int


def _files(root: Path, folder: Path, path: str) -> Iterator[tuple[Path, str]]:
    """The files of one class folder, hidden ones left out, each with its ``file:`` URL."""
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = file.relative_to(root).as_posix()
        if not any(part.startswith(".") for part in PurePosixPath(relative).parts):
            yield file, f"file:{PurePosixPath(path) / relative}"


def import_folder(source: str, path: str, labels: list[str], raw_dir: Path, *, max_images: int,
                  max_bytes: int, licence: str | None = None, attribution: str | None = None,
                  progress_every_s: float = 5.0) -> FolderImport:
    """Copy every file under ``path/<label>/`` into ``raw_dir``, recording each."""
    root = Path(path)
    store = RawStore(raw_dir)
    known = store.seen()
    stored = new = had = over = large = 0
    last_log = time.monotonic()
    for label in labels:
        folder = root / label
        if not folder.is_dir():
            continue
        prefix = f"file:{PurePosixPath(path) / label}/"
        # max_images is on the folder, not on one run: earlier imports count.
        taken = sum(1 for lab, url in known if lab == label and url.startswith(prefix))
        for file, url in _files(root, folder, path):
            if (label, url) in known:
                had += 1
                continue
            if taken >= max_images:
                over += 1
                continue
            size = file.stat().st_size
            if size > max_bytes:
                large += 1
                logger.warning("not imported (over scrape.crawl.max_bytes, %d bytes): %s",
                               size, url)
                continue
            data = file.read_bytes()
            stored_path, sniffed, is_new = store.store(label, data)
            store.append(RawRecord(
                url=url, final_url=url, page_url=f"file:{PurePosixPath(path) / label}",
                source=source, query="", label=label, sha256=Path(stored_path).stem,
                path=stored_path, bytes=len(data), content_type="", format=sniffed.format,
                width=sniffed.width, height=sniffed.height, licence=licence,
                attribution=attribution,
                fetched_at=datetime.now(UTC).isoformat(timespec="seconds")))
            known.add((label, url))
            taken += 1
            stored += 1
            new += is_new
            if time.monotonic() - last_log >= progress_every_s:
                last_log = time.monotonic()
                logger.info("folder %s: %d files imported so far", path, stored)
    if stored or had:
        logger.info("folder %s: %d imported (%d new files), %d already had, %d over the limit",
                    path, stored, new, had, over)
    return FolderImport(stored, new, had, over, large)
