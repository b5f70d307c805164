"""Item pipelines: where a fetched image goes.

The spider fetched the image as an ordinary request (robots.txt, throttling,
retries, redirects, size limits, the address guard and opt-outs all applied).
:class:`RawImagePipeline` hands the bytes to :class:`pipeline.contracts.raw.RawStore`,
which owns the on-disk format; in a crawl shared by several processes,
:class:`scraper.shared.HandOff` sends them to the scrape stage instead, which stores
them the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scrapy.crawler import Crawler
from scrapy.exceptions import NotConfigured

from pipeline.contracts import crawl as stat
from pipeline.contracts.raw import RawStore
from scraper.items import ImageItem
from scraper.policy import canonical


def item_fields(item: ImageItem, url_aliases: dict[str, str]) -> dict[str, Any]:
    """The item's fields as the manifest records them (``stat.ITEM_FIELDS``), URLs canonical."""
    fields = {name: getattr(item, name) for name in stat.ITEM_FIELDS}
    for name in ("url", "final_url", "page_url"):
        fields[name] = canonical(fields[name], url_aliases)
    return fields


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
        is_new = self.store.add(item.body, **item_fields(item, self.url_aliases))
        item.body = b""  # the bytes are on disk; do not keep them in Scrapy's item memory
        stats.inc_value(stat.IMAGES_STORED)
        stats.inc_value(stat.IMAGES_STORED_BY_SOURCE + item.source)
        stats.inc_value(stat.FILES_NEW if is_new else stat.FILES_EXISTING)
        return item
