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
import contextlib
import json
import logging
import time
import warnings
from collections.abc import Callable
from typing import Any

import redis
from scrapy import signals
from scrapy.crawler import Crawler
from scrapy.exceptions import DontCloseSpider, ScrapyDeprecationWarning
from scrapy.http import Request
from scrapy.utils.asyncio import create_looping_call
from scrapy.utils.defer import deferred_from_coro
from scrapy_redis.dupefilter import RFPDupeFilter
from scrapy_redis.scheduler import Scheduler

from pipeline.contracts import crawl as stat
from pipeline.scrape.handoff import refusal
from scraper.items import ImageItem
from scraper.pipelines import item_fields

logger = logging.getLogger(__name__)

REDIS_GONE = "shared_redis_gone"  # a worker's finish reason when the Redis server went away
POLL_S = 0.5  # how often an idle worker looks at the shared queue (Scrapy's own: 5 s)


def connect(url: str) -> redis.Redis:
    # socket_timeout: a server that accepts and never answers (not Redis) is not waited on
    return redis.Redis.from_url(url, socket_connect_timeout=10, socket_timeout=30,
                                health_check_interval=30)


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
    """scrapy-redis's scheduler on the shared queue, with leases: a request leaves the queue
    leased to this worker and stays leased until Scrapy is done with it, and this worker
    renews its liveness while it runs, so the stage can queue again what a dead worker held.
    A worker stays open while the queue has requests or any worker holds some (and so may
    add more), as long as the stage runs: it leaves once all was idle for
    ``shared_idle_close_s``."""

    worker: str
    idle_close_s: float
    lease_s: float
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
        scheduler.lease_s = settings.getfloat("HAPPYSAD_SHARED_LEASE_S")
        scheduler._idle_since: float | None = None
        scheduler._leases: dict[Request, str] = {}
        scheduler._leased = 0
        scheduler._pop = scheduler.server.register_script(stat.POP_AND_LEASE)
        scheduler._heartbeat = None
        scheduler._gone = False
        crawler.signals.connect(scheduler.spider_idle, signal=signals.spider_idle)
        return scheduler

    def open(self, spider: Any) -> None:
        with warnings.catch_warnings():  # scrapy-redis's "Resuming crawl" uses a deprecated log
            warnings.simplefilter("ignore", ScrapyDeprecationWarning)
            super().open(spider)
        quiet_redis_tracebacks()  # on the root handler Scrapy has installed by now
        self._beat()  # alive before the first request is leased
        self._heartbeat = create_looping_call(self._beat)
        self._heartbeat.start(min(self.lease_s / 4, 2.0), now=False)
        # An idle engine looks for work every 5 s; another worker's requests should not wait.
        # (Scrapy reads the interval when the spider opens, just after this.)
        self.crawler.engine._SLOT_HEARTBEAT_INTERVAL = POLL_S  # type: ignore[union-attr]

    def close(self, reason: str) -> None:
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        with contextlib.suppress(redis.RedisError):  # gone: nothing left to tidy there
            self._release_done()
            self.server.zrem(stat.ALIVE_KEY, self.worker)
        super().close(reason)

    def _lost(self, err: redis.RedisError) -> None:
        """The Redis server stopped answering: one line, and this worker stops (what it held
        is the stage's to queue again, or gone with the stage)."""
        if self._gone:
            return
        self._gone = True
        logger.error("the shared crawl's Redis server stopped answering (%s); this worker stops",
                     str(err).splitlines()[0][:200] if str(err) else type(err).__name__)
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        deferred_from_coro(self.crawler.engine.close_spider_async(  # type: ignore[union-attr]
            reason=REDIS_GONE))

    def _in_progress(self) -> set[Request]:
        # Scrapy keeps a request in its engine slot from the moment it leaves the scheduler
        # until its response (or failure) has gone through the spider and the item pipelines:
        # exactly a lease's life. (A private attribute: the shared-crawl tests pin it.)
        slot = getattr(self.crawler.engine, "_slot", None)
        return slot.inprogress if slot is not None else set()

    def _release_done(self) -> None:
        in_progress = self._in_progress()
        done = [request for request in self._leases if request not in in_progress]
        if done:
            self.server.hdel(stat.LEASES_KEY, *(self._leases.pop(r) for r in done))

    def _beat(self) -> None:
        """Renew this worker's liveness and drop the leases of the requests it is done with."""
        try:
            self._release_done()
            self.server.zadd(stat.ALIVE_KEY, {self.worker: time.time() + self.lease_s})
        except redis.RedisError as err:
            self._lost(err)

    # scrapy-redis's own two pass ``spider=`` to the stats, which Scrapy 2.13+ warns about on
    # every request.
    def enqueue_request(self, request: Request) -> bool:
        try:
            if not request.dont_filter and self.df.request_seen(request):
                self.df.log(request, self.spider)
                return False
            self.queue.push(request)
        except redis.RedisError as err:
            self._lost(err)
            return False
        self.stats.inc_value("scheduler/enqueued/redis")
        return True

    def next_request(self) -> Request | None:
        if self._gone:
            return None
        try:
            return self._next_request()
        except redis.RedisError as err:
            self._lost(err)
            return None

    def _next_request(self) -> Request | None:
        self._release_done()  # at once, so a worker that dies now leaves little fetched twice
        while True:
            self._leased += 1
            name = stat.lease_name(self.worker, self._leased)
            data = self._pop(keys=[stat.QUEUE_KEY, stat.LEASES_KEY], args=[name])
            if data is None:
                return None
            try:
                request = self.queue._decode_request(data)
                if request.callback is None or request.errback is None:
                    raise ValueError("this crawl's requests name their callback and errback")
            except Exception as err:  # noqa: BLE001 - anything in Redis may be anything
                self.server.hdel(stat.LEASES_KEY, name)
                refused(self.stats, "a queued request", err)
                continue
            self._leases[request] = name
            self.stats.inc_value("scheduler/dequeued/redis")
            return request

    def spider_idle(self) -> None:
        self._beat()
        if self._gone:
            return
        now = time.monotonic()
        try:
            busy = self.server.exists(stat.OWNER_KEY) and (
                len(self.queue) or self.server.hlen(stat.LEASES_KEY))
        except redis.RedisError as err:
            self._lost(err)
            return
        if busy:
            self._idle_since = None
            raise DontCloseSpider
        if self._idle_since is None:
            self._idle_since = now
        if now - self._idle_since < self.idle_close_s:
            raise DontCloseSpider


class _RedisTracebacks(logging.Filter):
    """Once Redis is gone the worker has said so in one line and is stopping; Scrapy's own
    lines for what fails meanwhile (a callback, a link queued) keep their line, not the
    traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        while error is not None and not isinstance(error, redis.RedisError):
            error = error.__cause__ or error.__context__
        if error is not None:
            record.exc_info = record.exc_text = None
            record.msg = f"{record.msg} (the shared crawl's Redis server stopped answering)"
        return True


def quiet_redis_tracebacks() -> None:
    """Install :class:`_RedisTracebacks` on the handlers Scrapy set up (once each)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _RedisTracebacks) for f in handler.filters):
            handler.addFilter(_RedisTracebacks())


def refused(stats: Any, what: str, why: object) -> None:
    """One line, and one error counted, for a value read from Redis that this crawl did not
    write; the crawl goes on without it."""
    stats.inc_value(stat.ERRORS)
    stats.inc_value(stat.ERRORS_BY_KIND + stat.BAD_SHARED_STATE)
    logger.warning("%s", refusal(what, why))


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
        try:
            self.server.rpush(stat.ITEMS_KEY, json.dumps(fields))
        except redis.RedisError:  # the worker is stopping (its scheduler said why)
            logger.warning("not handed over (the shared crawl's Redis server stopped "
                           "answering): %s", item.url)
            item.body = b""
            return item
        item.body = b""
        self.crawler.stats.inc_value(stat.IMAGES_HANDED_OFF)
        return item


class SharedCounts:
    """The spider's per-(source, class) counters, kept in Redis so limits hold for the whole
    crawl; the local stand-in is a ``collections.Counter`` with the same two methods. A
    counter that is not a count (text, a negative or absurd number) is refused in one line
    and starts again from 0."""

    MAX = 10**9

    def __init__(self, server: redis.Redis, kind: str,
                 refuse: Callable[[str, object], None]) -> None:
        self.server, self.kind, self.refuse = server, kind, refuse

    def _field(self, key: tuple[str, str]) -> str:
        return "|".join((self.kind, *key))

    def _checked(self, field: str, value: object) -> int:
        try:
            count = int(value)  # type: ignore[call-overload]
        except (TypeError, ValueError):
            return self._reset(field, f"{str(value)[:50]!r} is not a count")
        if 0 <= count <= self.MAX:
            return count
        return self._reset(field, f"{count} is not a count")

    def _reset(self, field: str, why: str) -> int:
        self.refuse(f"the counter {field!r}", f"{why}; it starts again from 0")
        self.server.hset(stat.COUNTS_KEY, field, 0)
        return 0

    def get(self, key: tuple[str, str], default: int = 0) -> int:
        value = self.server.hget(stat.COUNTS_KEY, self._field(key))
        return default if value is None else self._checked(self._field(key), value)

    def add(self, key: tuple[str, str]) -> int:
        field = self._field(key)
        try:
            return self._checked(field, self.server.hincrby(stat.COUNTS_KEY, field, 1))
        except redis.ResponseError:  # not an integer: Redis refuses to add to it
            self._reset(field, "Redis holds no integer there")
            return int(self.server.hincrby(stat.COUNTS_KEY, field, 1))


class SharedKnown:
    """(class, URL) pairs data/raw already has, as the stage put them in Redis."""

    def __init__(self, server: redis.Redis) -> None:
        self.server = server

    def __contains__(self, pair: object) -> bool:
        label, url = pair  # type: ignore[misc]
        return bool(self.server.sismember(stat.KNOWN_KEY, f"{label}\t{url}"))


def shared_settings(redis_url: str, worker: str, idle_close_s: float,
                    lease_s: float) -> dict[str, Any]:
    """The Scrapy settings that make a crawl a worker of the shared crawl."""
    return {
        "SCHEDULER": "scraper.shared.SharedScheduler",
        "REDIS_URL": redis_url,
        "ITEM_PIPELINES": {"scraper.shared.HandOff": 300},
        "HAPPYSAD_WORKER": worker,
        "HAPPYSAD_SHARED_IDLE_CLOSE_S": idle_close_s,
        "HAPPYSAD_SHARED_LEASE_S": lease_s,
        "JOBDIR": None,  # the queue is in Redis
    }
