"""The raw data contract: content-addressed image files plus an append-only manifest.

Layout under ``data/raw/``: ``<class>/<sha256>.<ext>`` holds the original bytes as
fetched, and ``manifest.jsonl`` holds one record per (class, url) fetched. Several
records may name one file (the same bytes under other URLs); a file is written
once, under a temporary name first, and never rewritten.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path

from PIL import Image

from pipeline.runtime.files import append_lines, repair_torn_tail

logger = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
_TMP_PREFIX = ".partial-"
_PIL_EXT = {"JPEG": "jpg", "PNG": "png", "GIF": "gif", "WEBP": "webp", "BMP": "bmp",
            "TIFF": "tif", "MPO": "jpg"}


@dataclass(frozen=True)
class RawRecord:
    """One fetched image as the manifest records it."""

    url: str
    final_url: str
    page_url: str
    source: str
    query: str
    label: str
    sha256: str
    path: str  # relative to the raw folder
    bytes: int
    content_type: str
    format: str | None
    width: int | None
    height: int | None
    licence: str | None
    attribution: str | None
    fetched_at: str
    licence_url: str | None = None  # absent from records written before API sources
    creator: str | None = None

    @classmethod
    def from_json(cls, line: str) -> RawRecord:
        data = json.loads(line)
        return cls(**{f.name: data.get(f.name) for f in fields(cls)})

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass(frozen=True)
class Sniffed:
    """What the bytes say they are, read from the header only (pixels are not decoded)."""

    ext: str
    format: str | None
    width: int | None
    height: int | None


def sniff(data: bytes) -> Sniffed:
    """Identify an image from its header; anything unidentifiable is stored as ``.bin``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                fmt = img.format or ""
                return Sniffed(_PIL_EXT.get(fmt, "bin"), fmt, img.width, img.height)
    except (Image.DecompressionBombError, OSError, SyntaxError, ValueError):
        return Sniffed("bin", None, None, None)


class RawStore:
    """Writes images and manifest records into a raw folder, safely across crashes."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.manifest_path = self.root / MANIFEST
        self._remove_partials()
        self._repair_manifest()

    def _remove_partials(self) -> None:
        for partial in self.root.glob(f"*/{_TMP_PREFIX}*"):
            logger.warning("removing %s left by an interrupted crawl", partial)
            partial.unlink(missing_ok=True)

    def _repair_manifest(self) -> None:
        """Drop a last line cut short by a crash, so every line is a whole record."""
        if not self.manifest_path.exists():
            return
        fd = os.open(self.manifest_path, os.O_RDWR | os.O_CLOEXEC)
        try:
            repair_torn_tail(fd, self.manifest_path)
        finally:
            os.close(fd)

    def records(self) -> Iterator[RawRecord]:
        yield from read_manifest(self.root)

    def seen(self) -> set[tuple[str, str]]:
        """(label, url) pairs already in the manifest: a re-crawl skips them."""
        return {(r.label, r.url) for r in self.records()}

    def store(self, label: str, data: bytes) -> tuple[str, Sniffed, bool]:
        """Write ``data`` under its content address; returns (relative path, sniffed, is_new)."""
        sha = hashlib.sha256(data).hexdigest()
        sniffed = sniff(data)
        relative = f"{label}/{sha}.{sniffed.ext}"
        target = self.root / relative
        if target.exists():
            return relative, sniffed, False
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return relative, sniffed, True

    def add(self, body: bytes, *, url: str, final_url: str, page_url: str, source: str,
            query: str, label: str, content_type: str, licence: str | None,
            licence_url: str | None, creator: str | None, attribution: str | None) -> bool:
        """Store one fetched image (its URLs already canonical) and append its record;
        whether its bytes were new to the folder."""
        path, sniffed, is_new = self.store(label, body)
        self.append(RawRecord(
            url=url, final_url=final_url, page_url=page_url, source=source, query=query,
            label=label, sha256=Path(path).stem, path=path, bytes=len(body),
            content_type=content_type, format=sniffed.format, width=sniffed.width,
            height=sniffed.height, licence=licence, licence_url=licence_url, creator=creator,
            attribution=attribution,
            fetched_at=datetime.now(UTC).isoformat(timespec="seconds")))
        return is_new

    def append(self, record: RawRecord) -> None:
        """Append one record as one write, so a crash leaves whole lines behind."""
        append_lines(self.manifest_path, [record.to_json()], sync=False)


def read_manifest(root: Path) -> Iterator[RawRecord]:
    """Records of a raw folder's manifest, skipping a partial last line."""
    path = Path(root) / MANIFEST
    if not path.exists():
        return
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.endswith("\n") and line.strip():
                yield RawRecord.from_json(line)
