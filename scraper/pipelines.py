"""Item pipeline that fetches each image and stores it in data/raw with a manifest record.

It downloads through the engine (so robots.txt, throttling, retries, redirects,
size limits and the offsite guard all apply, as for any request) and hands the
bytes to :class:`pipeline.raw.RawStore`, which owns the on-disk format.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from scrapy import Request
from scrapy.crawler import Crawler
from scrapy.exceptions import IgnoreRequest, NotConfigured
from scrapy.http.request import NO_CALLBACK

from pipeline.raw import RawRecord, RawStore
from scraper.items import ImageItem

logger = logging.getLogger(__name__)


class RawImagePipeline:
    """Fetch, store content-addressed, record; skip what an earlier crawl already stored."""

    def __init__(self, raw_dir: Path, errors_path: Path | None, crawler: Crawler,
                 url_aliases: dict[str, str] | None = None) -> None:
        self.crawler = crawler
        self.url_aliases = url_aliases or {}
        self.store = RawStore(raw_dir)
        self.known = self.store.seen()
        self.errors_path = errors_path
        self.errors: list[dict[str, Any]] = []

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> RawImagePipeline:
        raw_dir = crawler.settings.get("HAPPYSAD_RAW_DIR")
        if not raw_dir:
            raise NotConfigured("HAPPYSAD_RAW_DIR is not set")
        errors = crawler.settings.get("HAPPYSAD_ERRORS_PATH")
        aliases = crawler.settings.getdict("HAPPYSAD_URL_ALIASES")
        return cls(Path(raw_dir), Path(errors) if errors else None, crawler, aliases)

    def canonical(self, url: str) -> str:
        """The URL as recorded: a server with no fixed address (the demo site on a free
        port) is written under its alias, so re-crawls recognise what they stored."""
        for base, alias in self.url_aliases.items():
            if url == base or url.startswith(base + "/"):
                return alias + url[len(base):]
        return url

    def _fail(self, item: ImageItem, kind: str, detail: str) -> ImageItem:
        stats = self.crawler.stats
        stats.inc_value("happysad/errors")
        stats.inc_value(f"happysad/errors/{kind}")
        self.errors.append({"url": self.canonical(item.url),
                            "page_url": self.canonical(item.page_url), "label": item.label,
                            "error": kind, "detail": detail})
        logger.warning("image not stored (%s): %s (%s)", kind, item.url, detail)
        return item

    async def process_item(self, item: ImageItem) -> ImageItem:
        stats = self.crawler.stats
        url = self.canonical(item.url)
        if (item.label, url) in self.known:
            stats.inc_value("happysad/images_known")
            return item
        request = Request(item.url, callback=NO_CALLBACK, headers={"Referer": item.page_url})
        try:
            response = await self.crawler.engine.download_async(request)
        except IgnoreRequest as err:  # robots.txt or the offsite guard said no
            stats.inc_value("happysad/blocked")
            logger.info("not fetched (%s): %s", err or "filtered", item.url)
            return item
        except Exception as err:  # noqa: BLE001 - every transport failure is reported, not raised
            return self._fail(item, type(err).__name__, str(err) or repr(err))
        if response.status != 200:
            return self._fail(item, f"http_{response.status}", f"HTTP {response.status}")
        path, sniffed, is_new = self.store.store(item.label, response.body)
        content_type = response.headers.get(b"Content-Type", b"").decode("latin-1")
        record = RawRecord(
            url=url, final_url=self.canonical(response.url), page_url=self.canonical(item.page_url),
            source=item.source,
            query=item.query, label=item.label, sha256=Path(path).stem, path=path,
            bytes=len(response.body), content_type=content_type, format=sniffed.format,
            width=sniffed.width, height=sniffed.height, licence=item.licence,
            attribution=item.attribution, fetched_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        self.store.append(record)
        self.known.add((item.label, url))
        stats.inc_value("happysad/images_stored")
        stats.inc_value("happysad/files_new" if is_new else "happysad/files_existing")
        return item

    def close_spider(self) -> None:
        if self.errors_path is not None:
            self.errors_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.errors_path, "w", encoding="utf-8") as fh:
                for error in self.errors:
                    fh.write(json.dumps(error, sort_keys=True) + "\n")
