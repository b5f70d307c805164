"""The scrape stage's side of a crawl shared through Redis (``HAPPYSAD_CRAWL_REDIS``).

The stage puts the crawl's config and the (class, URL) pairs data/raw already has on
the Redis server, starts ``scrape.crawl.shared_workers`` crawler processes (``python -m
scraper.crawl --shared URL``; other machines join with the same command), and stores
every image the workers hand back, as the one writer of data/raw. It trusts nothing it
reads there: an image record must have the expected fields, one of the crawl's classes,
and a body within ``max_bytes``. When every worker has left, it sums their stats and
clears the crawl's keys. One stage at a time may run a crawl on one Redis server.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import redis

from pipeline.contracts import crawl as stat
from pipeline.contracts.raw import RawStore
from pipeline.runtime.errors import UserError
from pipeline.runtime.files import append_lines
from pipeline.runtime.lifeline import parent_death_signal
from pipeline.scrape.process import CrawlPausedError, signals_to_child

logger = logging.getLogger(__name__)

OWNER_TTL_S = 60  # the claim on the Redis server lapses this long after a stage dies
POP_TIMEOUT_S = 0.5


def shared_redis_url() -> str | None:
    """The Redis server the crawl is shared through, if ``HAPPYSAD_CRAWL_REDIS`` names one."""
    return os.environ.get(stat.REDIS_ENV, "").strip() or None


def check_shared_redis() -> None:
    """One line, before anything else runs, when ``HAPPYSAD_CRAWL_REDIS`` names a server that
    does not answer."""
    url = shared_redis_url()
    if url is not None:
        _connect(url).close()


def _connect(url: str) -> redis.Redis:
    try:
        server = redis.Redis.from_url(url, socket_connect_timeout=10)
        server.ping()
    except (redis.RedisError, ValueError) as err:
        raise UserError(f"no Redis server answers at {url} ({stat.REDIS_ENV}): "
                        f"{str(err).rstrip('.')}; start one, or unset {stat.REDIS_ENV} to crawl "
                        "in one process") from None
    return server


def checked_item(raw: bytes, labels: set[str], max_bytes: int) -> tuple[bytes, dict[str, Any]]:
    """A handed-over image's body and fields, or ValueError saying what is wrong with it."""
    data = json.loads(raw)
    if not isinstance(data, dict) or set(data) != {*stat.ITEM_FIELDS, "body"}:
        raise ValueError("not an image record of this crawl")
    if data["label"] not in labels:
        raise ValueError(f"class {data['label']!r} is not one of this crawl's")
    for name in stat.ITEM_FIELDS:
        optional = name in stat.ITEM_OPTIONAL_FIELDS
        if not isinstance(data[name], str) and not (optional and data[name] is None):
            raise ValueError(f"its {name} is not text")
    try:
        body = base64.b64decode(data.pop("body"), validate=True)
    except (binascii.Error, TypeError):
        raise ValueError("its body is not base64") from None
    if len(body) > max_bytes:  # (an empty body is stored and recorded, as in one process)
        raise ValueError(f"its body has {len(body)} bytes (at most {max_bytes} allowed)")
    return body, data


class _Claim:
    """This stage's claim on the Redis server: one shared crawl per server at a time."""

    def __init__(self, server: redis.Redis, url: str) -> None:
        self.server, self.token = server, f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
        if not server.set(stat.OWNER_KEY, self.token, nx=True, ex=OWNER_TTL_S):
            owner = (server.get(stat.OWNER_KEY) or b"?").decode(errors="replace")
            raise UserError(f"a shared crawl is already running on {url} (its stage: {owner}); "
                            "wait for it to end, or use another Redis database (…/1)")
        self.renewed = time.monotonic()

    def renew(self) -> None:
        if time.monotonic() - self.renewed > OWNER_TTL_S / 4:
            self.server.expire(stat.OWNER_KEY, OWNER_TTL_S)
            self.renewed = time.monotonic()

    def release(self) -> None:
        if self.server.get(stat.OWNER_KEY) == self.token.encode():
            self.server.delete(stat.OWNER_KEY)


class SharedCrawl:
    """One crawl shared through ``url``: seed it, run the local workers, store what comes."""

    def __init__(self, url: str, config: dict[str, Any], raw_dir: Path, work: Path) -> None:
        self.url, self.config, self.work = url, config, work
        self.server = _connect(url)
        self.store = RawStore(raw_dir)
        self.labels = set(config["classes"])
        self.max_bytes = int(config["crawl"]["max_bytes"])
        self.counts: Counter[str] = Counter()
        self.errors_path = Path(config["errors_path"])

    def _publish(self) -> None:
        self.server.delete(*stat.SHARED_KEYS)
        known = [f"{label}\t{url}" for label, url in self.store.seen()]
        for start in range(0, len(known), 10_000):
            self.server.sadd(stat.KNOWN_KEY, *known[start:start + 10_000])
        self.server.set(stat.CONFIG_KEY, json.dumps(self.config))

    def _start_workers(self, count: int) -> list[subprocess.Popen]:
        host = socket.gethostname()
        return [subprocess.Popen(
            [sys.executable, "-m", "scraper.crawl", "--shared", self.url,
             "--worker", f"{host}-{os.getpid()}-{index}"],
            preexec_fn=parent_death_signal(signal.SIGTERM, reset=(signal.SIGINT, signal.SIGTERM)))
            for index in range(count)]

    def _store(self, raw: bytes) -> None:
        try:
            body, fields = checked_item(raw, self.labels, self.max_bytes)
        except ValueError as err:
            self.counts[stat.ERRORS] += 1
            self.counts[stat.ERRORS_BY_KIND + "bad_handoff"] += 1
            logger.warning("a worker handed over an image record that is not stored: %s", err)
            return
        is_new = self.store.add(body, **fields)
        self.counts[stat.IMAGES_STORED] += 1
        self.counts[stat.IMAGES_STORED_BY_SOURCE + fields["source"]] += 1
        self.counts[stat.FILES_NEW if is_new else stat.FILES_EXISTING] += 1

    def _drain_errors(self) -> None:
        while lines := self.server.lpop(stat.ERRORS_KEY, 500):
            append_lines(self.errors_path, [line.decode(errors="replace") for line in lines],
                         sync=False)

    def run(self, workers: int) -> tuple[dict[str, Any], list[int]]:
        """Run the crawl to its end; the summed stats and the local workers' exit codes."""
        claim = _Claim(self.server, self.url)
        try:
            self._publish()
            processes = self._start_workers(workers)
            logger.info("crawl shared through %s: %d crawler processes here; more join with "
                        "`python -m scraper.crawl --shared %s`", self.url, workers, self.url)
            while True:
                running = any(p.poll() is None for p in processes)
                popped = self.server.blpop([stat.ITEMS_KEY], timeout=POP_TIMEOUT_S)
                if popped is not None:
                    self._store(popped[1])
                self._drain_errors()
                claim.renew()
                if not running and popped is None and not self.server.llen(stat.ITEMS_KEY):
                    break
            codes = [p.wait() for p in processes]
            return self._merged_stats(), codes
        finally:
            self.server.delete(*stat.SHARED_KEYS)
            claim.release()

    def _merged_stats(self) -> dict[str, Any]:
        """The workers' stats summed (times: the longest; memory: the largest), with what this
        stage stored in place of what they handed over."""
        merged: dict[str, Any] = {}
        workers: dict[str, int] = {}
        for raw in self.server.lrange(stat.STATS_KEY, 0, -1):
            entry = json.loads(raw)
            workers[str(entry["worker"])] = int(entry["stats"].get(stat.IMAGES_HANDED_OFF, 0))
            for key, value in entry["stats"].items():
                if not isinstance(value, int | float) or isinstance(value, bool):
                    merged.setdefault(key, value)
                elif key in (stat.PEAK_RSS_MB, "elapsed_time_seconds"):
                    merged[key] = max(merged.get(key, 0), value)
                else:
                    merged[key] = merged.get(key, 0) + value
        for key, count in self.counts.items():
            merged[key] = merged.get(key, 0) + count
        merged["happysad/workers"] = workers
        merged["finish_reason"] = "finished"
        return merged


def run_shared_crawl(config: dict[str, Any], work: Path, url: str, workers: int) -> dict[str, Any]:
    """The crawl of ``config`` shared through ``url``, with ``workers`` crawler processes here;
    its stats, as ``run_crawl_subprocess`` returns a one-process crawl's."""
    work.mkdir(parents=True, exist_ok=True)
    crawl = SharedCrawl(url, config, Path(config["raw_dir"]), work)
    with signals_to_child():  # Ctrl-C pauses the workers; the stage stores what they send
        stats, codes = crawl.run(workers)
    Path(config["stats_path"]).write_text(json.dumps(stats, indent=1, sort_keys=True))
    if stat.PAUSED_EXIT in codes:
        raise CrawlPausedError("the shared crawl was stopped. Images stored so far are kept in "
                               "data/raw; run the same command again to crawl on (what data/raw "
                               "has is not fetched again)")
    failed = [code for code in codes if code != stat.FINISHED_EXIT]
    if failed:
        raise UserError(f"a crawler process failed (exit code {failed[0]}); its log above says "
                        "why. Data already stored in data/raw is kept; run again to go on")
    return stats
