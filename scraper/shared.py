"""A crawl shared by several crawler processes, on one or many machines, through Redis.

scrapy-redis gives the crawl one request queue and one seen-requests filter on a Redis
server: every worker runs this same spider with every rule (robots.txt, throttling, the
address guard, opt-outs, licences), takes its next request from the shared queue, and
a request any worker has scheduled is never scheduled again, so no page or image is
fetched twice. What the spider kept in its own memory is shared too: the limits'
counters, the images data/raw already has, and who asks for the start pages. The
fetched images go back through Redis to the scrape stage (:mod:`pipeline.scrape.shared`),
the one writer of data/raw, so a worker needs no shared disk.

Nothing read from Redis is unpickled: the queue's requests are JSON (bytes tagged as
base64), and the stage checks every image it is handed.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from typing import Any

import redis
from scrapy import signals
from scrapy.crawler import Crawler
from scrapy.exceptions import DontCloseSpider
from scrapy.http import Request
from scrapy_redis.dupefilter import RFPDupeFilter
from scrapy_redis.scheduler import Scheduler

from pipeline.contracts import crawl as stat
from scraper.items import ImageItem
from scraper.pipelines import item_fields

logger = logging.getLogger(__name__)

BUSY_TTL_S = 30.0  # a worker that died while busy stops counting as busy after this long
POLL_S = 0.5  # how often an idle worker looks at the shared queue (Scrapy's own: 5 s)


def connect(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=10, health_check_interval=30)


class JsonCodec:
    """The queue's serializer: JSON, with bytes as ``{"$b64": ...}`` and a dict with bytes keys
    (a request's headers) as ``{"$bdict": [[key, value], ...]}``. scrapy-redis's default is
    pickle, which would run whatever anyone who can write to the Redis server put there."""

    @classmethod
    def _plain(cls, value: Any) -> Any:
        if isinstance(value, bytes):
            return {"$b64": base64.b64encode(value).decode("ascii")}
        if isinstance(value, dict):
            if any(isinstance(key, bytes) for key in value):
                return {"$bdict": [[cls._plain(k), cls._plain(v)] for k, v in value.items()]}
            return {key: cls._plain(v) for key, v in value.items()}
        if isinstance(value, list | tuple):
            return [cls._plain(v) for v in value]
        return value

    @staticmethod
    def _hook(value: dict[str, Any]) -> Any:
        if len(value) == 1 and "$b64" in value:
            return base64.b64decode(value["$b64"], validate=True)
        if len(value) == 1 and "$bdict" in value:
            return {key: item for key, item in value["$bdict"]}
        return value

    @classmethod
    def dumps(cls, obj: Any) -> str:
        return json.dumps(cls._plain(obj), separators=(",", ":"))

    @classmethod
    def loads(cls, text: str | bytes) -> Any:
        return json.loads(text, object_hook=cls._hook)


class SharedDupeFilter(RFPDupeFilter):
    """scrapy-redis's filter on the shared key, fingerprinting as this crawl does (the class
    label is part of an image request's fingerprint: see ``LabelledFingerprinter``)."""

    fingerprinter: Any

    @classmethod
    def from_spider(cls, spider: Any) -> SharedDupeFilter:
        seen = cls(connect(spider.settings["REDIS_URL"]), key=stat.SEEN_KEY,
                   debug=spider.settings.getbool("DUPEFILTER_DEBUG"))
        seen.fingerprinter = spider.crawler.request_fingerprinter
        return seen

    def request_fingerprint(self, request: Request) -> str:
        return self.fingerprinter.fingerprint(request).hex()

    def close(self, reason: str = "") -> None:
        """Keep the filter: the stage clears the shared keys when the whole crawl ends."""


class SharedScheduler(Scheduler):
    """scrapy-redis's scheduler on the shared queue. It marks this worker busy while it holds
    requests, and keeps it open while the queue has requests or another worker is busy (and
    so may add some): a worker leaves once all were idle for ``shared_idle_close_s``."""

    worker: str
    idle_close_s: float
    crawler: Crawler

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> SharedScheduler:
        settings = crawler.settings
        scheduler = cls(connect(settings["REDIS_URL"]), persist=True, queue_key=stat.QUEUE_KEY,
                        queue_cls="scrapy_redis.queue.PriorityQueue",
                        dupefilter_key=stat.SEEN_KEY,
                        dupefilter_cls="scraper.shared.SharedDupeFilter", serializer=JsonCodec)
        scheduler.stats = crawler.stats
        scheduler.crawler = crawler
        scheduler.worker = settings["HAPPYSAD_WORKER"]
        scheduler.idle_close_s = settings.getfloat("HAPPYSAD_SHARED_IDLE_CLOSE_S")
        scheduler._busy_until = 0.0
        scheduler._idle_since: float | None = None
        crawler.signals.connect(scheduler.spider_idle, signal=signals.spider_idle)
        return scheduler

    def open(self, spider: Any) -> None:
        super().open(spider)
        # An idle engine looks for work every 5 s; another worker's requests should not wait.
        # (Scrapy reads the interval when the spider opens, just after this.)
        self.crawler.engine._SLOT_HEARTBEAT_INTERVAL = POLL_S  # type: ignore[union-attr]

    # scrapy-redis's own two pass ``spider=`` to the stats, which Scrapy 2.13+ warns about on
    # every request.
    def enqueue_request(self, request: Request) -> bool:
        if not request.dont_filter and self.df.request_seen(request):
            self.df.log(request, self.spider)
            return False
        self.stats.inc_value("scheduler/enqueued/redis")
        self.queue.push(request)
        return True

    def next_request(self) -> Request | None:
        request = self.queue.pop(0)
        if request is not None:
            self.stats.inc_value("scheduler/dequeued/redis")
        now = time.time()
        if request is not None and now > self._busy_until - BUSY_TTL_S / 2:
            self._busy_until = now + BUSY_TTL_S
            self.server.zadd(stat.BUSY_KEY, {self.worker: self._busy_until})
        return request

    def spider_idle(self) -> None:
        if self._busy_until:
            self.server.zrem(stat.BUSY_KEY, self.worker)
            self._busy_until = 0.0
        now = time.monotonic()
        if len(self.queue) or self.server.zcount(stat.BUSY_KEY, time.time(), "+inf"):
            self._idle_since = None
            raise DontCloseSpider
        if self._idle_since is None:
            self._idle_since = now
        if now - self._idle_since < self.idle_close_s:
            raise DontCloseSpider


class HandOff:
    """The item pipeline of a shared crawl's worker: each fetched image goes to the stage
    through Redis (JSON; the body in base64), and the stage stores it."""

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.server = connect(crawler.settings["REDIS_URL"])
        self.url_aliases = crawler.settings.getdict("HAPPYSAD_URL_ALIASES")

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> HandOff:
        return cls(crawler)

    def process_item(self, item: ImageItem) -> ImageItem:
        fields = item_fields(item, self.url_aliases)
        fields["body"] = base64.b64encode(item.body).decode("ascii")
        self.server.rpush(stat.ITEMS_KEY, json.dumps(fields))
        item.body = b""
        self.crawler.stats.inc_value(stat.IMAGES_HANDED_OFF)
        return item


class SharedCounts:
    """The spider's per-(source, class) counters, kept in Redis so limits hold for the whole
    crawl; the local stand-in is a ``collections.Counter`` with the same two methods."""

    def __init__(self, server: redis.Redis, kind: str) -> None:
        self.server, self.kind = server, kind

    def _field(self, key: tuple[str, str]) -> str:
        return "|".join((self.kind, *key))

    def get(self, key: tuple[str, str], default: int = 0) -> int:
        return int(self.server.hget(stat.COUNTS_KEY, self._field(key)) or default)

    def add(self, key: tuple[str, str]) -> int:
        return int(self.server.hincrby(stat.COUNTS_KEY, self._field(key), 1))


class SharedKnown:
    """(class, URL) pairs data/raw already has, as the stage put them in Redis."""

    def __init__(self, server: redis.Redis) -> None:
        self.server = server

    def __contains__(self, pair: object) -> bool:
        label, url = pair  # type: ignore[misc]
        return bool(self.server.sismember(stat.KNOWN_KEY, f"{label}\t{url}"))


def shared_settings(redis_url: str, worker: str, idle_close_s: float) -> dict[str, Any]:
    """The Scrapy settings that make a crawl a worker of the shared crawl."""
    return {
        "SCHEDULER": "scraper.shared.SharedScheduler",
        "REDIS_URL": redis_url,
        "ITEM_PIPELINES": {"scraper.shared.HandOff": 300},
        "HAPPYSAD_WORKER": worker,
        "HAPPYSAD_SHARED_IDLE_CLOSE_S": idle_close_s,
        "JOBDIR": None,  # the queue is in Redis
    }
