"""Progress lines for long crawls: pages, images stored, known, blocked and errors."""

from __future__ import annotations

import logging
import time

from scrapy import signals
from scrapy.crawler import Crawler
from scrapy.exceptions import NotConfigured
from scrapy.statscollectors import StatsCollector
from scrapy.utils.asyncio import create_looping_call

from pipeline.contracts import crawl as stat

logger = logging.getLogger(__name__)


class CrawlProgress:
    """Log a one-line summary every HAPPYSAD_PROGRESS_EVERY_S seconds and at the end."""

    def __init__(self, stats: StatsCollector, interval: float) -> None:
        self.stats = stats
        self.interval = interval
        self.started = time.monotonic()
        self.task = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> CrawlProgress:
        interval = crawler.settings.getfloat("HAPPYSAD_PROGRESS_EVERY_S", 5.0)
        if interval <= 0:
            raise NotConfigured
        ext = cls(crawler.stats, interval)
        crawler.signals.connect(ext.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(ext.spider_closed, signal=signals.spider_closed)
        return ext

    def line(self) -> str:
        value = self.stats.get_value
        pages = sum(v for k, v in self.stats.get_stats().items() if k.startswith(stat.PAGES))
        elapsed = max(time.monotonic() - self.started, 1e-9)
        handed = value(stat.IMAGES_HANDED_OFF, 0)
        if handed:  # a shared crawl's worker: the stage stores what it fetches
            images = f"images sent to the stage {handed} ({handed / elapsed:.1f}/s)"
        else:
            stored = value(stat.IMAGES_STORED, 0)
            images = (f"images stored {stored} ({value(stat.FILES_NEW, 0)} new files, "
                      f"{stored / elapsed:.1f}/s)")
        return (f"pages {pages}, {images}, already had {value(stat.IMAGES_KNOWN, 0)}, "
                f"blocked {value(stat.BLOCKED, 0)}, errors {value(stat.ERRORS, 0)}")

    def spider_opened(self) -> None:
        self.started = time.monotonic()
        self.task = create_looping_call(self.log)
        self.task.start(self.interval, now=False)

    def log(self) -> None:
        logger.info("progress: %s", self.line())

    def spider_closed(self, reason: str) -> None:
        if self.task is not None and self.task.running:
            self.task.stop()
        logger.info("finished (%s): %s", reason, self.line())
