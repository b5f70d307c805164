"""One spider for every web source of params.yaml: gallery sites, Openverse, Wikimedia Commons.

Pages and API answers are parsed by callbacks here; what they mean is decided by
:mod:`scraper.sources` and :mod:`scraper.markup`. Every image is itself a
scheduled request (so robots.txt, throttling, retries, redirects, size limits,
the address guard and a paused crawl's queue apply to it as to any page), and
its response goes, as an item, to :class:`scraper.pipelines.RawImagePipeline`.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus, urlsplit

import scrapy
from scrapy.exceptions import DownloadCancelledError, IgnoreRequest
from scrapy.http import Response
from scrapy.spidermiddlewares.httperror import HttpError
from twisted.internet.defer import CancelledError
from twisted.python.failure import Failure

from pipeline.raw import read_manifest
from scraper.items import ImageItem
from scraper.markup import element_url, select
from scraper.policy import AUTH_ENV_META, AUTH_HOST_META, LABEL_META, canonical, opted_out
from scraper.sources import openverse, wikimedia
from scraper.sources.found import FoundImage

logger = logging.getLogger(__name__)

IMAGE_PRIORITY = 10  # images before more pages: the queue stays short


class ImagesSpider(scrapy.Spider):
    """Walks every enabled web source per class, yielding each image once."""

    name = "images"

    def __init__(self, config: str | dict[str, Any], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(config, dict):
            config = json.loads(Path(config).read_text())
        self.classes: dict[str, dict[str, Any]] = config["classes"]
        self.sources: dict[str, dict[str, Any]] = {
            name: source for name, source in config["sources"].items()
            if source.get("enabled", True) and source["kind"] != "folder"}
        self.aliases: dict[str, str] = config.get("url_aliases", {})
        self.opt_out: list[str] = config["crawl"].get("opt_out", [])
        self.errors_path = Path(config["errors_path"]) if config.get("errors_path") else None
        self.known = {(r.label, r.url) for r in read_manifest(Path(config["raw_dir"]))}
        hosts = {urlsplit(u).hostname for s in self.sources.values() if s["kind"] == "gallery"
                 for u in [*(x for urls in s.get("start_urls", {}).values() for x in urls),
                           s.get("search_url") or ""]}
        extra = {d for s in self.sources.values() for d in s.get("allowed_domains", [])}
        self.gallery_domains = sorted(h for h in hosts | extra if h)
        self.pages_requested: Counter[tuple[str, str]] = Counter()
        self.images_found: Counter[tuple[str, str]] = Counter()
        self._yielded: set[tuple[str, str]] = set()

    def _on_site(self, url: str) -> bool:
        """Whether a gallery image is on a start URL's domain (or a subdomain) or an
        allowed one; like Scrapy's offsite filter, but counted and logged."""
        host = (urlsplit(url).hostname or "").lower()
        return not self.gallery_domains or any(
            host == d or host.endswith("." + d) for d in self.gallery_domains)

    # -- start ------------------------------------------------------------------------

    async def start(self) -> AsyncIterator[scrapy.Request]:
        # With a job folder, Scrapy keeps ``self.state`` across a pause: the limits' counters
        # go on from where they were, and the queue on disk already holds the rest.
        state = getattr(self, "state", None)
        if state is None:
            self.state = state = {}
        self.pages_requested = state.setdefault("pages_requested", self.pages_requested)
        self.images_found = state.setdefault("images_found", self.images_found)
        self._yielded = state.setdefault("yielded", self._yielded)
        if state.get("started"):
            logger.info("resuming a paused crawl from its job folder")
            return
        for name, source in self.sources.items():
            for label, cls in self.classes.items():
                for request in self._start_requests(name, source, label, cls.get("queries", [])):
                    yield request  # a resumed crawl yields them again; the seen filter drops them
        state["started"] = True

    def _start_requests(self, name: str, source: dict[str, Any], label: str,
                        queries: list[str]) -> Iterator[scrapy.Request]:
        kwargs = {"source": name, "label": label}
        query = queries[0] if queries else ""
        if source["kind"] == "gallery":
            urls = [(u, query) for u in source.get("start_urls", {}).get(label, [])]
            if source.get("search_url"):
                urls += [(source["search_url"].replace("{query}", quote_plus(q)), q)
                         for q in queries]
            for url, q in urls:
                self.pages_requested[(name, label)] += 1
                yield scrapy.Request(url, callback=self.parse_gallery,
                                     cb_kwargs={**kwargs, "query": q})
        elif source["kind"] == "openverse":
            for q in queries:
                yield self._api_request(source, openverse.page_url(source, q, 1),
                                        self.parse_openverse, {**kwargs, "query": q, "page": 1})
        elif source["kind"] == "wikimedia":
            for category in source.get("categories", {}).get(label, []):
                yield self._api_request(source, wikimedia.query_url(source, category=category),
                                        self.parse_wikimedia,
                                        {**kwargs, "query": category, "batch": 1,
                                         "category": True})
            if source.get("search", True):
                for q in queries:
                    yield self._api_request(source, wikimedia.query_url(source, search=q),
                                            self.parse_wikimedia,
                                            {**kwargs, "query": q, "batch": 1, "category": False})

    def _api_request(self, source: dict[str, Any], url: str, callback: Any,
                     cb_kwargs: dict[str, Any]) -> scrapy.Request:
        """A documented API is called under its own usage policy, not robots.txt, and may be
        on any host; images it names are fetched under the usual rules."""
        meta: dict[str, Any] = {"dont_obey_robotstxt": True, "allow_offsite": True}
        if source.get("token_env"):
            meta[AUTH_ENV_META] = source["token_env"]  # the token itself is never in a request
            meta[AUTH_HOST_META] = urlsplit(url).netloc
        return scrapy.Request(url, callback=callback, errback=self.page_failed,
                              cb_kwargs=cb_kwargs, meta=meta,
                              headers={"Accept": "application/json"})

    # -- pages ------------------------------------------------------------------------

    def _count_page(self, source: str, label: str) -> None:
        stats = self.crawler.stats
        stats.inc_value(f"happysad/pages/{label}")
        stats.inc_value(f"happysad/pages_by_source/{source}")

    def _page_opted_out(self, response: Response) -> bool:
        why = opted_out(response, self.opt_out, self.crawler.settings.get("BOT_NAME", "happysad"))
        if why:
            self.crawler.stats.inc_value("happysad/opted_out_pages")
            logger.info("images of %s not taken: the page opts out (%s)", response.url, why)
        return bool(why)

    def parse_gallery(self, response: Response, source: str, label: str,
                      query: str) -> Iterator[Any]:
        """A result page: its images, its detail links, and the next page."""
        config = self.sources[source]
        self._count_page(source, label)
        if not self._page_opted_out(response):
            yield from self._page_images(response, source, label, query, config["image_selector"])
        kwargs = {"source": source, "label": label, "query": query}
        if config.get("detail_selector"):
            for link in select(response, config["detail_selector"]):
                href = element_url(link)
                if href:
                    yield response.follow(href, callback=self.parse_detail, cb_kwargs=kwargs)
        next_selector = config.get("next_page_selector")
        if next_selector and self.pages_requested[(source, label)] < config["max_pages"]:
            for link in select(response, next_selector)[:1]:
                href = element_url(link)
                if href:
                    self.pages_requested[(source, label)] += 1
                    yield response.follow(href, callback=self.parse_gallery, cb_kwargs=kwargs)

    def parse_detail(self, response: Response, source: str, label: str,
                     query: str) -> Iterator[scrapy.Request]:
        """A detail page holding the full-size image."""
        if self._page_opted_out(response):
            return
        selector = self.sources[source].get("detail_image_selector") or "img"
        yield from self._page_images(response, source, label, query, selector)

    def _page_images(self, response: Response, source: str, label: str, query: str,
                     selector: str) -> Iterator[scrapy.Request]:
        config = self.sources[source]
        for element in select(response, selector):
            href = element_url(element)
            if not href:
                continue
            url = response.urljoin(href)  # honours <base href>
            if not self._on_site(url):
                self.crawler.stats.inc_value("happysad/blocked")
                self.crawler.stats.inc_value("happysad/offsite")
                logger.info("not fetched (off-site; add its domain to allowed_domains): %s", url)
                continue
            found = FoundImage(url=url, page_url=response.url, licence=config.get("licence"),
                               attribution=config.get("attribution"))
            request = self._image_request(source, label, query, found)
            if request is not None:
                yield request

    def parse_openverse(self, response: Response, source: str, label: str, query: str,
                        page: int) -> Iterator[scrapy.Request]:
        config = self.sources[source]
        self._count_page(source, label)
        images, page_count = openverse.parse_page(json.loads(response.text))
        for found in images:
            request = self._image_request(source, label, query, found, allow_offsite=True)
            if request is not None:
                yield request
        if (page < min(page_count, config["max_pages"]) and images
                and self.images_found[(source, label)] < config["max_images"]):
            yield self._api_request(config, openverse.page_url(config, query, page + 1),
                                    self.parse_openverse,
                                    {"source": source, "label": label, "query": query,
                                     "page": page + 1})

    def parse_wikimedia(self, response: Response, source: str, label: str, query: str,
                        batch: int, category: bool) -> Iterator[scrapy.Request]:
        config = self.sources[source]
        self._count_page(source, label)
        data = json.loads(response.text)
        if "error" in data:
            self._record_error(response.url, response.url, label, "api_error",
                               str(data["error"].get("info") or data["error"]))
            return
        images, cont = wikimedia.parse_batch(data)
        for found in images:
            request = self._image_request(source, label, query, found, allow_offsite=True)
            if request is not None:
                yield request
        if (cont and batch < config["max_batches"]
                and self.images_found[(source, label)] < config["max_images"]):
            url = wikimedia.query_url(config, cont=cont, **(
                {"category": query} if category else {"search": query}))
            yield self._api_request(config, url, self.parse_wikimedia,
                                    {"source": source, "label": label, "query": query,
                                     "batch": batch + 1, "category": category})

    # -- images -----------------------------------------------------------------------

    def _image_request(self, source: str, label: str, query: str, found: FoundImage,
                       allow_offsite: bool = False) -> scrapy.Request | None:
        stats = self.crawler.stats
        url = canonical(found.url, self.aliases)
        if (label, url) in self.known:
            stats.inc_value("happysad/images_known")
            return None
        if (label, url) in self._yielded:
            return None
        if self.images_found[(source, label)] >= self.sources[source]["max_images"]:
            stats.inc_value(f"happysad/over_image_limit/{label}")
            return None
        self._yielded.add((label, url))
        self.images_found[(source, label)] += 1
        meta: dict[str, Any] = {LABEL_META: label}
        if allow_offsite:
            meta["allow_offsite"] = True
        ref = {"source": source, "label": label, "query": query, "url": found.url,
               "page_url": found.page_url, "licence": found.licence,
               "licence_url": found.licence_url, "creator": found.creator,
               "attribution": found.attribution}
        return scrapy.Request(found.url, callback=self.save_image, errback=self.image_failed,
                              cb_kwargs={"ref": ref}, meta=meta, priority=IMAGE_PRIORITY,
                              headers={"Referer": found.page_url})

    def save_image(self, response: Response, ref: dict[str, Any]) -> Iterator[ImageItem]:
        if response.status != 200:
            self._fail(ref, f"http_{response.status}", f"HTTP {response.status}")
            return
        why = opted_out(response, self.opt_out, self.crawler.settings.get("BOT_NAME", "happysad"))
        if why:
            self.crawler.stats.inc_value("happysad/opted_out")
            logger.info("not stored: %s opts out (%s)", response.url, why)
            return
        yield ImageItem(
            url=ref["url"], page_url=ref["page_url"], label=ref["label"], source=ref["source"],
            query=ref["query"], licence=ref["licence"], licence_url=ref["licence_url"],
            creator=ref["creator"], attribution=ref["attribution"], body=response.body,
            final_url=response.url,
            content_type=response.headers.get(b"Content-Type", b"").decode("latin-1"))

    def image_failed(self, failure: Failure) -> None:
        request = failure.request  # type: ignore[attr-defined]
        ref = request.cb_kwargs["ref"]
        if failure.check(HttpError):  # (an IgnoreRequest too: test it first)
            status = failure.value.response.status
            self._fail(ref, f"http_{status}", f"HTTP {status}")
        elif failure.check(IgnoreRequest):  # robots.txt or the address guard said no
            self.crawler.stats.inc_value("happysad/blocked")
            logger.info("not fetched (%s): %s", failure.value or "filtered", request.url)
        elif failure.check(DownloadCancelledError, CancelledError):
            self._fail(ref, "too_large", str(failure.value) or "download cancelled "
                       "(over scrape.crawl.max_bytes)")
        else:
            self._fail(ref, type(failure.value).__name__, str(failure.value) or repr(failure.value))

    def page_failed(self, failure: Failure) -> None:
        request = failure.request  # type: ignore[attr-defined]
        label = request.cb_kwargs.get("label", "")
        if failure.check(IgnoreRequest) and not failure.check(HttpError):
            self.crawler.stats.inc_value("happysad/blocked")
            logger.info("not fetched (%s): %s", failure.value or "filtered", request.url)
            return
        kind = (f"http_{failure.value.response.status}" if failure.check(HttpError)
                else type(failure.value).__name__)
        self._record_error(request.url, request.url, label, kind, str(failure.value))

    def _fail(self, ref: dict[str, Any], kind: str, detail: str) -> None:
        self._record_error(ref["url"], ref["page_url"], ref["label"], kind, detail)

    def _record_error(self, url: str, page_url: str, label: str, kind: str, detail: str) -> None:
        """Count, log and append one error line at once, so a paused crawl keeps them."""
        stats = self.crawler.stats
        stats.inc_value("happysad/errors")
        stats.inc_value(f"happysad/errors/{kind}")
        logger.warning("not stored (%s): %s (%s)", kind, url, detail)
        if self.errors_path is not None:
            line = json.dumps({"url": canonical(url, self.aliases),
                               "page_url": canonical(page_url, self.aliases), "label": label,
                               "error": kind, "detail": detail}, sort_keys=True) + "\n"
            fd = os.open(self.errors_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)
