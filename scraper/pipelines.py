"""Item pipeline that stores each fetched image in data/raw with a manifest record.

The spider fetched the image as an ordinary request (robots.txt, throttling,
retries, redirects, size limits, the address guard and opt-outs all applied);
this hands the bytes to :class:`pipeline.contracts.raw.RawStore`, which owns the on-disk
format.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from scrapy.crawler import Crawler
from scrapy.exceptions import NotConfigured

from pipeline.contracts import crawl as stat
from pipeline.contracts.raw import RawRecord, RawStore
from scraper.items import ImageItem
from scraper.policy import canonical


class RawImagePipeline:
    """Store content-addressed and record; the spider skipped what data/raw already had."""

    def __init__(self, raw_dir: Path, crawler: Crawler,
                 url_aliases: dict[str, str] | None = None) -> None:
        self.crawler = crawler
        self.url_aliases = url_aliases or {}
        self.store = RawStore(raw_dir)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> RawImagePipeline:
        raw_dir = crawler.settings.get("HAPPYSAD_RAW_DIR")
        if not raw_dir:
            raise NotConfigured("HAPPYSAD_RAW_DIR is not set")
        return cls(Path(raw_dir), crawler, crawler.settings.getdict("HAPPYSAD_URL_ALIASES"))

    def process_item(self, item: ImageItem) -> ImageItem:
        stats = self.crawler.stats
        path, sniffed, is_new = self.store.store(item.label, item.body)
        record = RawRecord(
            url=canonical(item.url, self.url_aliases),
            final_url=canonical(item.final_url, self.url_aliases),
            page_url=canonical(item.page_url, self.url_aliases), source=item.source,
            query=item.query, label=item.label, sha256=Path(path).stem, path=path,
            bytes=len(item.body), content_type=item.content_type, format=sniffed.format,
            width=sniffed.width, height=sniffed.height, licence=item.licence,
            licence_url=item.licence_url, creator=item.creator, attribution=item.attribution,
            fetched_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        self.store.append(record)
        item.body = b""  # the bytes are on disk; do not keep them in Scrapy's item memory
        stats.inc_value(stat.IMAGES_STORED)
        stats.inc_value(stat.IMAGES_STORED_BY_SOURCE + item.source)
        stats.inc_value(stat.FILES_NEW if is_new else stat.FILES_EXISTING)
        return item
