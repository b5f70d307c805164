"""The scrape stage's side of a crawl shared through Redis (``HAPPYSAD_CRAWL_REDIS``).

The stage puts the crawl's config and the (class, URL) pairs data/raw already has on
the Redis server, starts ``scrape.crawl.shared_workers`` crawler processes (``python -m
scraper.crawl --shared URL``; other machines join with the same command), and stores
every image the workers hand back, as the one writer of data/raw. It trusts nothing it
reads there (:mod:`pipeline.scrape.handoff`). No request is lost to a worker that dies:
each is leased while a worker holds it, and the stage queues again what a dead worker
held (a local worker's at once, with a spare started in its place; a worker elsewhere
once its liveness lapses, after ``shared_lease_s``). The stage exits non-zero if the
crawl ends with requests never fetched. When every local worker has left, it sums the
workers' stats and clears the crawl's keys. One stage at a time may run a crawl on one
Redis server.
"""

from __future__ import annotations

import contextlib
import itertools
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
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import redis

from pipeline.contracts import crawl as stat
from pipeline.contracts.raw import RawStore
from pipeline.runtime.errors import UserError
from pipeline.runtime.files import append_lines
from pipeline.runtime.lifeline import parent_death_signal
from pipeline.scrape.handoff import (
    checked_error_line,
    checked_item,
    checked_lease,
    checked_stats,
    refusal,
)
from pipeline.scrape.process import CrawlPausedError, signals_to_child

logger = logging.getLogger(__name__)

OWNER_TTL_S = 60  # the claim on the Redis server lapses this long after a stage dies
POP_TIMEOUT_S = 0.5
SOCKET_TIMEOUT_S = 10  # a server that accepts and never answers (not Redis) is not waited on


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
        server = redis.Redis.from_url(url, socket_connect_timeout=10, socket_timeout=SOCKET_TIMEOUT_S)
        server.ping()
    except (redis.RedisError, ValueError) as err:
        raise UserError(f"no Redis server answers at {url} ({stat.REDIS_ENV}): "
                        f"{str(err).rstrip('.')}; start one, or unset {stat.REDIS_ENV} to crawl "
                        "in one process") from None
    return server


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
    """One crawl shared through ``url``: seed it, run the local workers, store what comes,
    and queue again the requests of a worker that died (at-least-once: the stage keeps one
    record per (class, URL), so a request fetched twice is stored once)."""

    def __init__(self, url: str, config: dict[str, Any], raw_dir: Path, work: Path) -> None:
        self.url, self.config, self.work = url, config, work
        self.server = _connect(url)
        self.store = RawStore(raw_dir)
        self.labels = set(config["classes"])
        self.max_bytes = int(config["crawl"]["max_bytes"])
        self.lease_s = float(config["crawl"]["shared_lease_s"])
        self.counts: Counter[str] = Counter()
        self.errors_path = Path(config["errors_path"])
        self.stored: set[tuple[str, str]] = set()
        self.dead: set[str] = set()  # workers whose leases were queued again
        self._return = self.server.register_script(stat.RETURN_LEASE)
        self._reclaimed = 0.0
        self._numbers = itertools.count()  # the local workers' numbers, spares included

    def _publish(self) -> None:
        self.server.delete(*stat.SHARED_KEYS)
        self.stored = self.store.seen()
        known = [f"{label}\t{url}" for label, url in self.stored]
        for start in range(0, len(known), 10_000):
            self.server.sadd(stat.KNOWN_KEY, *known[start:start + 10_000])
        self.server.set(stat.CONFIG_KEY, json.dumps(self.config))

    def _start_worker(self, name: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "scraper.crawl", "--shared", self.url, "--worker", name],
            preexec_fn=parent_death_signal(signal.SIGTERM, reset=(signal.SIGINT, signal.SIGTERM)))

    def _refused(self, what: str, err: ValueError) -> None:
        self.counts[stat.ERRORS] += 1
        self.counts[stat.ERRORS_BY_KIND + stat.BAD_SHARED_STATE] += 1
        logger.warning("%s", refusal(what, err))

    def _store(self, raw: bytes) -> None:
        try:
            body, fields = checked_item(raw, self.labels, self.max_bytes)
        except ValueError as err:
            self._refused("an image record", err)
            return
        pair = (fields["label"], fields["url"])
        if pair in self.stored:  # fetched again after its worker died: one record a pair
            self.counts[stat.IMAGES_KNOWN] += 1
            return
        self.stored.add(pair)
        is_new = self.store.add(body, **fields)
        self.counts[stat.IMAGES_STORED] += 1
        self.counts[stat.IMAGES_STORED_BY_SOURCE + fields["source"]] += 1
        self.counts[stat.FILES_NEW if is_new else stat.FILES_EXISTING] += 1

    def _drain_errors(self) -> None:
        while lines := self.server.lpop(stat.ERRORS_KEY, 500):
            kept = []
            for line in lines:
                try:
                    kept.append(checked_error_line(line, self.labels))
                except ValueError as err:
                    self._refused("an error line", err)
            append_lines(self.errors_path, kept, sync=False)

    def reclaim(self, died: dict[str, str] | None = None) -> int:
        """Queue again the requests leased to workers that are gone: those in ``died`` (name:
        how), and those whose liveness lapsed, or was set implausibly far ahead; how many."""
        died = dict(died or {})
        leases = self.server.hgetall(stat.LEASES_KEY)  # before liveness: a lease taken after
        now = time.time()                                # this read is not looked at
        live = set()
        for name, until in self.server.zrange(stat.ALIVE_KEY, 0, -1, withscores=True):
            worker = name.decode("utf-8", errors="replace")
            if worker in died:
                pass
            elif until < now:
                died[worker] = f"no sign of life for {self.lease_s + now - until:.0f} s"
            elif until > now + 2 * self.lease_s:
                died[worker] = "its lease was set to end far in the future, which no worker does"
            else:
                live.add(worker)
                continue
            self.server.zrem(stat.ALIVE_KEY, name)
        returned: Counter[str] = Counter()
        for name, value in leases.items():
            worker = stat.lease_worker(name)
            if worker in live:
                continue
            try:
                score, request = checked_lease(value)
            except ValueError as err:
                self.server.hdel(stat.LEASES_KEY, name)
                self._refused("a leased request", err)
                continue
            if self._return(keys=[stat.LEASES_KEY, stat.QUEUE_KEY],
                            args=[name, value, score, request]):
                returned[worker] += 1
        for worker in sorted(set(died) | set(returned)):
            if returned[worker] or worker not in self.dead:
                logger.warning("crawler worker %s is gone (%s): the %d requests it held go back "
                               "on the queue", worker, died.get(worker, "not running"),
                               returned[worker])
            self.dead.add(worker)
        self.counts[stat.REQUESTS_RETURNED] += sum(returned.values())
        return sum(returned.values())

    def run(self, workers: int) -> tuple[dict[str, Any], list[int]]:
        """Run the crawl to its end; the summed stats and the local workers' exit codes."""
        claim = _Claim(self.server, self.url)
        try:
            self._publish()
            prefix = f"{socket.gethostname()}-{os.getpid()}-"
            processes = {}
            for _ in range(workers):
                name = f"{prefix}{next(self._numbers)}"
                processes[name] = self._start_worker(name)
            logger.info("crawl shared through %s: %d crawler processes here; more join with "
                        "`python -m scraper.crawl --shared %s`", self.url, workers, self.url)
            try:
                codes = self._supervise(processes, prefix, workers, claim)
            except redis.RedisError as err:
                _stop(processes.values())
                raise UserError(f"the Redis server at {self.url} stopped answering mid-crawl "
                                f"({str(err).splitlines()[0][:200] if str(err) else 'no answer'}); "
                                "the images stored so far are kept in data/raw: start it "
                                "again and rerun to crawl on") from None
            left = self.server.zcard(stat.QUEUE_KEY) + self.server.hlen(stat.LEASES_KEY)
            if left and all(code == stat.FINISHED_EXIT for code in codes):
                raise UserError(f"the shared crawl ended with {left} requests never fetched "
                                "(every worker left before they were); the images stored are "
                                "kept in data/raw: run again to fetch the rest")
            return self._merged_stats(), codes
        finally:
            with contextlib.suppress(redis.RedisError):  # a server gone keeps nothing anyway
                self.server.delete(*stat.SHARED_KEYS)
                claim.release()

    def _supervise(self, processes: dict[str, subprocess.Popen], prefix: str, spares: int,
                   claim: _Claim) -> list[int]:
        """Store what the workers hand over until every local worker has left. A local worker
        that dies is replaced (``spares`` times at most) and its requests queued again at once;
        a worker elsewhere that stops renewing its liveness has its requests queued again
        after ``shared_lease_s``. The local workers' exit codes (a replaced one's left out)."""
        codes: list[int] = []
        while True:
            died: dict[str, str] = {}
            for name, process in list(processes.items()):
                code = process.poll()
                if code is None:
                    continue
                del processes[name]
                if code not in (stat.FINISHED_EXIT, stat.PAUSED_EXIT):
                    died[name] = f"exit code {code}"
                    if spares > 0 and stat.PAUSED_EXIT not in codes:
                        spares -= 1
                        spare = f"{prefix}{next(self._numbers)}"
                        processes[spare] = self._start_worker(spare)
                        logger.warning("crawler worker %s died (exit code %d); %s takes its "
                                       "place", name, code, spare)
                        continue
                codes.append(code)
            popped = self.server.blpop([stat.ITEMS_KEY], timeout=POP_TIMEOUT_S)
            if popped is not None:
                self._store(popped[1])
            self._drain_errors()
            if died or time.monotonic() - self._reclaimed > min(self.lease_s / 4, 2.0):
                self.reclaim(died)
                self._reclaimed = time.monotonic()
            claim.renew()
            if not processes and popped is None and not self.server.llen(stat.ITEMS_KEY):
                return codes

    def _merged_stats(self) -> dict[str, Any]:
        """The workers' stats summed (times: the longest; memory: the largest), with what this
        stage stored in place of what they handed over."""
        merged: dict[str, Any] = {}
        workers: dict[str, int] = {}
        for raw in self.server.lrange(stat.STATS_KEY, 0, -1):
            try:
                worker, stats = checked_stats(raw)
            except ValueError as err:
                self._refused("a worker's stats", err)
                continue
            workers[worker] = int(stats.get(stat.IMAGES_HANDED_OFF, 0))
            for key, value in stats.items():
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


def _stop(processes: Iterable[subprocess.Popen]) -> None:
    """SIGTERM (a pause) to each crawler process here, then SIGKILL to any still there 30 s on."""
    processes = list(processes)
    for process in processes:
        process.terminate()
    deadline = time.monotonic() + 30
    for process in processes:
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


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
        raise UserError(f"a crawler process failed (exit code {failed[0]}) with no spare left "
                        f"({workers} replaced already); its log above says why. Data already "
                        "stored in data/raw is kept; run again to go on")
    return stats
