"""``python -m scraper.crawl CONFIG.json``: one crawl in its own process; ``python -m
scraper.crawl --shared REDIS_URL``: one more worker of a crawl shared through Redis
(:mod:`scraper.shared`), on this machine or another.

The scrape stage writes the config (classes, enabled sources with resolved URLs,
crawl politeness, output paths) and runs this module in a subprocess, because
Twisted's reactor cannot be restarted inside one process.

Exit status: 0 when the crawl finished, 3 when it was paused (Ctrl-C or SIGTERM
once: Scrapy finishes what is in flight and, with a job folder, keeps its queue
there for the next run), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import socket
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import redis
from pydantic import ValidationError
from scrapy.crawler import CrawlerProcess
from scrapy.settings import Settings

from pipeline.config.scrape import CrawlParams
from pipeline.contracts import crawl as stat
from scraper.policy import user_agent
from scraper.spiders.images import ImagesSpider


def crawl_settings(config: dict[str, Any]) -> Settings:
    """Project settings with the politeness knobs of params.yaml's `scrape.crawl` applied."""
    settings = Settings()
    settings.setmodule("scraper.settings", priority="project")
    crawl = CrawlParams.model_validate(config["crawl"])  # typed again, checked again
    headers = dict(settings.getdict("DEFAULT_REQUEST_HEADERS"))
    if "@" in crawl.contact:
        headers["From"] = crawl.contact  # RFC 9110: the e-mail of the bot's operator
    settings.setdict({
        "ROBOTSTXT_OBEY": crawl.obey_robots,
        "AUTOTHROTTLE_ENABLED": crawl.autothrottle,
        "AUTOTHROTTLE_START_DELAY": crawl.autothrottle_start_delay_s,
        "AUTOTHROTTLE_MAX_DELAY": crawl.autothrottle_max_delay_s,
        "AUTOTHROTTLE_TARGET_CONCURRENCY": crawl.autothrottle_target_concurrency,
        "CONCURRENT_REQUESTS": crawl.concurrent_requests,
        "CONCURRENT_REQUESTS_PER_DOMAIN": crawl.concurrent_requests_per_domain,
        "DOWNLOAD_SLOTS": {host: {"concurrency": limit.concurrency, "delay": limit.delay_s}
                           for host, limit in crawl.domain_limits.items()},
        "DOWNLOAD_DELAY": crawl.download_delay_s,
        "DOWNLOAD_TIMEOUT": crawl.download_timeout_s,
        "DOWNLOAD_MAXSIZE": crawl.max_bytes,
        "DOWNLOAD_WARNSIZE": min(crawl.max_bytes, 10 * 1024 * 1024),
        "RETRY_TIMES": crawl.retries,
        "USER_AGENT": user_agent(crawl.user_agent, crawl.contact),
        "DEFAULT_REQUEST_HEADERS": headers,
        "HAPPYSAD_PROGRESS_EVERY_S": crawl.progress_every_s,
        "HAPPYSAD_RAW_DIR": config["raw_dir"],
        "HAPPYSAD_URL_ALIASES": config.get("url_aliases", {}),
        "HAPPYSAD_ALLOW_PRIVATE_HOSTS": crawl.allow_private_hosts,
    }, priority="cmdline")
    if config.get("job_dir"):
        settings.set("JOBDIR", config["job_dir"], priority="cmdline")
    if config.get("shared"):
        from scraper.shared import shared_settings

        settings.setdict(shared_settings(config["shared"]["redis_url"], config["shared"]["worker"],
                                         crawl.shared_idle_close_s, crawl.shared_lease_s),
                         priority="cmdline")
    return settings


# Scrapy's start-up banner: its version table, every overridden setting and the enabled
# add-ons, extensions and middlewares (about 70 lines a crawl). Warnings still show.
BANNER_LOGGERS = ("scrapy.utils.log", "scrapy.crawler", "scrapy.middleware", "scrapy.addons",
                  "scrapy.extensions.telnet")


# Loggers that add a traceback to a one-line error a crawl meets as a matter of course (a
# host with no DNS answer for robots.txt): the line stays, the traceback goes (--verbose keeps it).
TERSE_LOGGERS = ("scrapy.downloadermiddlewares.robotstxt",)


def _without_traceback(record: logging.LogRecord) -> bool:
    record.exc_info, record.exc_text = None, None
    return True


def run_crawl(config: dict[str, Any]) -> dict[str, Any]:
    """Crawl to completion (or a pause) in this process and return Scrapy's final stats."""
    if not config.get("banner", False):
        # A filter, not a level: Scrapy's logging setup (dictConfig) resets child loggers' levels.
        for name in BANNER_LOGGERS:
            logging.getLogger(name).addFilter(lambda record: record.levelno >= logging.WARNING)
        for name in TERSE_LOGGERS:
            logging.getLogger(name).addFilter(_without_traceback)
    process = CrawlerProcess(crawl_settings(config))
    crawler = process.create_crawler(ImagesSpider)
    process.crawl(crawler, config=config)
    process.start()
    # Peak resident memory of this crawl process (Linux reports KiB).
    crawler.stats.set_value(stat.PEAK_RSS_MB,
                            round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))
    stats = {k: v.isoformat() if isinstance(v, datetime) else v
             for k, v in crawler.stats.get_stats().items()
             if isinstance(v, int | float | str | datetime)}
    stats_path = config.get("stats_path")
    if stats_path:
        Path(stats_path).parent.mkdir(parents=True, exist_ok=True)
        Path(stats_path).write_text(json.dumps(stats, indent=1, sort_keys=True, default=str))
    return stats


MAX_SHARED_CONFIG_BYTES = 2**20


def shared_config(redis_url: str, worker: str) -> dict[str, Any]:
    """The config of the crawl shared through ``redis_url``, as its scrape stage wrote it, for
    one more worker; checked as the spider will read it, so a broken one is one line."""
    from scraper import shared

    try:
        text = shared.connect(redis_url).get(stat.CONFIG_KEY)
    except (redis.RedisError, ValueError) as err:
        raise SystemExit(f"crawl: error: no Redis server answers at {redis_url} ({err}); "
                         f"give the URL the scrape stage has in {stat.REDIS_ENV}") from None
    if text is None:
        raise SystemExit(f"crawl: error: no shared crawl is running on {redis_url}; start the "
                         f"scrape stage with {stat.REDIS_ENV}={redis_url} first")
    try:
        if len(text) > MAX_SHARED_CONFIG_BYTES:
            raise ValueError(f"{len(text)} bytes")
        config = json.loads(text)
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
        config.update(shared={"redis_url": redis_url, "worker": worker}, raw_dir=None,
                      errors_path=None, stats_path=None, job_dir=None)
        ImagesSpider(config=config)  # every section typed and checked, as the crawl will
        crawl_settings(config)
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as err:
        raise SystemExit(f"crawl: error: the shared crawl's config on {redis_url} is not one a "
                         f"scrape stage wrote ({_why(err)}); restart the scrape stage") from None
    return config


def _why(err: BaseException) -> str:
    """An exception in a few words: a validation error's first complaint and where."""
    if isinstance(err, ValidationError):
        first = err.errors()[0]
        return f"{'.'.join(map(str, first['loc'])) or 'value'}: {first['msg']}"
    if isinstance(err, KeyError):
        return f"no {err}"
    if isinstance(err, json.JSONDecodeError):
        return f"not JSON: {err}"
    if isinstance(err, RecursionError):
        return "nested too deep"
    return (str(err).splitlines() or [type(err).__name__])[0][:200]


def run_shared_worker(redis_url: str, worker: str) -> dict[str, Any]:
    """One worker of a shared crawl: run to its end, then hand the stage this worker's stats."""
    from scraper import shared

    stats = run_crawl(shared_config(redis_url, worker))
    try:
        shared.connect(redis_url).rpush(stat.STATS_KEY,
                                        json.dumps({"worker": worker, "stats": stats}))
    except redis.RedisError:
        sys.stderr.write(f"crawl: error: the Redis server at {redis_url} stopped answering; "
                         "this worker's stats are not handed over\n")
        stats["finish_reason"] = shared.REDIS_GONE
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scraper.crawl",
                                     description="Run one crawl, or join a shared one.")
    parser.add_argument("config", nargs="?", type=Path, help="the crawl's config (JSON)")
    parser.add_argument("--shared", metavar="REDIS_URL",
                        help="join the crawl the scrape stage shares through this Redis server")
    parser.add_argument("--worker", default=f"{socket.gethostname()}-{os.getpid()}",
                        help="this worker's name in the shared crawl (default: host-pid)")
    args = parser.parse_args(argv)
    if (args.config is None) == (args.shared is None):
        parser.error("give either CONFIG.json or --shared REDIS_URL")
    if args.shared:
        stats = run_shared_worker(args.shared, args.worker)
    else:
        stats = run_crawl(json.loads(args.config.read_text()))
    reason = stats.get("finish_reason")
    return {"finished": stat.FINISHED_EXIT, "shutdown": stat.PAUSED_EXIT}.get(str(reason), 1)


if __name__ == "__main__":
    sys.exit(main())
