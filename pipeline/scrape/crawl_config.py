"""The crawl subprocess's config, built from the scrape params: enabled web sources with
``{demo}`` resolved, the politeness settings and where to write."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pipeline.config.scrape import DEMO_PLACEHOLDER, ScrapeParams


def web_sources(params: ScrapeParams) -> dict[str, Any]:
    """The enabled sources that are crawled (all but folder imports)."""
    return {name: source for name, source in params.enabled_sources().items()
            if source.kind != "folder"}


def crawl_config(params: ScrapeParams, raw_dir: Path, work: Path,
                 demo_url: str | None) -> dict[str, Any]:
    """The subprocess's config: enabled web sources with ``{demo}`` resolved."""
    sources = {}
    for name, source in web_sources(params).items():
        data = source.model_dump()
        if demo_url is not None and source.kind == "gallery":
            data["start_urls"] = {label: [u.replace(DEMO_PLACEHOLDER, demo_url) for u in urls]
                                  for label, urls in data["start_urls"].items()}
            if data["search_url"]:
                data["search_url"] = data["search_url"].replace(DEMO_PLACEHOLDER, demo_url)
        sources[name] = data
    crawl = params.crawl.model_dump()
    if demo_url is not None:
        crawl["allow_private_hosts"] = [*crawl["allow_private_hosts"],
                                        demo_url.removeprefix("http://")]
    return {
        "classes": {label: cls.model_dump() for label, cls in params.classes.items()},
        "sources": sources,
        "crawl": crawl,
        "raw_dir": str(raw_dir.resolve()),
        "errors_path": str(work / "errors.jsonl"),
        "stats_path": str(work / "stats.json"),
        "url_aliases": {demo_url: DEMO_PLACEHOLDER} if demo_url else {},
        # Scrapy's start-up banner (versions, settings, middlewares) only with --verbose
        "banner": logging.getLogger().isEnabledFor(logging.DEBUG),
    }
