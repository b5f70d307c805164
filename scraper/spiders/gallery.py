"""A spider for image-search and gallery pages described by selectors, one source per class."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import scrapy
from parsel import Selector, SelectorList
from scrapy.http import Response

from pipeline.params import is_xpath
from scraper.items import ImageItem

_SRCSET_CANDIDATE = re.compile(r"^\s*(\S+)(?:\s+(\d+(?:\.\d+)?)([wx]))?\s*$")


def select(node: Selector | Response, selector: str) -> SelectorList:
    """CSS by default; XPath when the selector starts like one."""
    if is_xpath(selector):
        return node.xpath(selector)
    return node.css(selector)


def largest_srcset_candidate(srcset: str) -> str | None:
    """The URL with the largest width (or density) descriptor in a srcset attribute."""
    best, best_size = None, -1.0
    for part in srcset.split(","):
        match = _SRCSET_CANDIDATE.match(part)
        if not match:
            continue
        url, size = match.group(1), float(match.group(2) or 1)
        if size > best_size:
            best, best_size = url, size
    return best


def element_url(element: Selector) -> str | None:
    """The image URL an element points to: srcset's largest, then data-src, src, href."""
    attrs = element.attrib
    if attrs.get("srcset"):
        candidate = largest_srcset_candidate(attrs["srcset"])
        if candidate:
            return candidate
    for name in ("data-src", "src", "href"):
        value = attrs.get(name, "").strip()
        if value and not value.startswith("data:"):
            return value
    return None


class GallerySpider(scrapy.Spider):
    """Walks result pages per class, yielding each image once; pipelines fetch and store."""

    name = "gallery"

    def __init__(self, config: str | dict[str, Any], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(config, dict):
            config = json.loads(Path(config).read_text())
        self.source_name: str = config.get("source", "web")
        self.classes: dict[str, dict[str, Any]] = config["classes"]
        hosts = {urlsplit(u).hostname for c in self.classes.values() for u in c["start_urls"]}
        extra = {d for c in self.classes.values() for d in c.get("allowed_domains", [])}
        self.allowed_domains = sorted(h for h in hosts | extra if h)
        self.pages_requested: Counter[str] = Counter()
        self.images_found: Counter[str] = Counter()
        self._yielded: set[tuple[str, str]] = set()

    async def start(self) -> AsyncIterator[scrapy.Request]:
        for label, source in self.classes.items():
            for url in source["start_urls"]:
                self.pages_requested[label] += 1
                yield scrapy.Request(url, callback=self.parse_results, cb_kwargs={"label": label})

    def parse_results(self, response: Response, label: str) -> Iterator[Any]:
        """A result page: its images, its detail links, and the next page."""
        source = self.classes[label]
        self.crawler.stats.inc_value(f"happysad/pages/{label}")
        yield from self._images(response, label, source["image_selector"])
        if source.get("detail_selector"):
            for link in select(response, source["detail_selector"]):
                href = element_url(link)
                if href:
                    yield response.follow(href, callback=self.parse_detail,
                                          cb_kwargs={"label": label})
        next_selector = source.get("next_page_selector")
        if next_selector and self.pages_requested[label] < source["max_pages"]:
            for link in select(response, next_selector)[:1]:
                href = element_url(link)
                if href:
                    self.pages_requested[label] += 1
                    yield response.follow(href, callback=self.parse_results,
                                          cb_kwargs={"label": label})

    def parse_detail(self, response: Response, label: str) -> Iterator[ImageItem]:
        """A detail page holding the full-size image."""
        selector = self.classes[label].get("detail_image_selector") or "img"
        yield from self._images(response, label, selector)

    def _images(self, response: Response, label: str, selector: str) -> Iterator[ImageItem]:
        source = self.classes[label]
        for element in select(response, selector):
            href = element_url(element)
            if not href:
                continue
            url = response.urljoin(href)
            if (label, url) in self._yielded:
                continue
            if self.images_found[label] >= source["max_images"]:
                self.crawler.stats.inc_value(f"happysad/over_image_limit/{label}")
                continue
            self._yielded.add((label, url))
            self.images_found[label] += 1
            yield ImageItem(url=url, page_url=response.url, label=label,
                            source=self.source_name, query=source.get("query", ""),
                            licence=source.get("licence"), attribution=source.get("attribution"))
