"""One spider for every web source of params.yaml, whatever its kind.

What a kind asks for and what its answers mean is its plugin's business
(:mod:`scraper.sources`); this spider counts pages, applies the limits, the
opt-outs and the on-site rule, and records errors, the same for every kind.
Every image is itself a scheduled request (so robots.txt, throttling, retries,
redirects, size limits, the address guard and a paused crawl's queue apply to it
as to any page), and its response goes, as an item, to
:class:`scraper.pipelines.RawImagePipeline`.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import AsyncIterator, Container, Hashable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import scrapy
from scrapy.exceptions import DownloadCancelledError, IgnoreRequest
from scrapy.http import Response
from scrapy.spidermiddlewares.httperror import HttpError
from twisted.internet.defer import CancelledError
from twisted.python.failure import Failure

from pipeline.config.scrape import ClassParams, CrawlParams
from pipeline.contracts import crawl as stat
from pipeline.contracts.raw import read_manifest
from pipeline.runtime.files import append_lines
from scraper.items import ImageItem
from scraper.policy import (
    AUTH_ENV_META,
    AUTH_HOST_META,
    LABEL_META,
    RedirectLoopError,
    TooManyRedirectsError,
    canonical,
    opted_out,
)
from scraper.sources import ApiError, Step, WebSource, registry
from scraper.sources.base import FoundImage

logger = logging.getLogger(__name__)

IMAGE_PRIORITY = 10  # images before more pages: the queue stays short


class _Progress:
    """A live view of the spider's counts for one source and class."""

    def __init__(self, spider: ImagesSpider, key: tuple[str, str]) -> None:
        self._spider, self._key = spider, key

    @property
    def pages(self) -> int:
        return self._spider.pages_requested.get(self._key, 0)

    @property
    def images(self) -> int:
        return self._spider.images_found.get(self._key, 0)


class Counts(Counter):
    """Pages or images per (source, class); :class:`scraper.shared.SharedCounts` is the same
    in Redis, for a crawl shared by several processes."""

    def add(self, key: Hashable) -> int:
        self[key] += 1
        return self[key]


class ImagesSpider(scrapy.Spider):
    """Walks every enabled web source per class, yielding each image once."""

    name = "images"

    def __init__(self, config: str | dict[str, Any], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(config, dict):
            config = json.loads(Path(config).read_text())
        self.classes = {label: ClassParams.model_validate(c) for label, c in config["classes"].items()}
        kinds, crawl = registry(), CrawlParams.model_validate(config["crawl"])
        self.sources: dict[str, WebSource] = {
            name: kinds[data["kind"]].from_config(data, crawl)
            for name, data in config["sources"].items()}
        self.sources = {name: s for name, s in self.sources.items() if s.params.enabled}
        self.aliases: dict[str, str] = config.get("url_aliases", {})
        self.opt_out = crawl.opt_out
        self.errors_path = Path(config["errors_path"]) if config.get("errors_path") else None
        self.image_domains = sorted({d for s in self.sources.values() for d in s.image_domains()})
        self._yielded: set[tuple[str, str]] = set()
        self.shared = config.get("shared")
        if self.shared:  # one of several workers of a crawl shared through Redis
            from scraper import shared

            server = shared.connect(self.shared["redis_url"])
            self.known: Container[tuple[str, str]] = shared.SharedKnown(server)
            def refuse(what: str, why: object) -> None:
                shared.refused(self.crawler.stats, what, why)

            self.pages_requested: Any = shared.SharedCounts(server, "pages", refuse)
            self.images_found: Any = shared.SharedCounts(server, "images", refuse)
            self._seeder = lambda: bool(server.set(stat.SEEDED_KEY, self.shared["worker"],
                                                   nx=True))
            self._write_error = lambda line: server.rpush(stat.ERRORS_KEY, line)
        else:
            self.known = {(r.label, r.url) for r in read_manifest(Path(config["raw_dir"]))}
            self.pages_requested, self.images_found = Counts(), Counts()
            self._seeder = lambda: True
            self._write_error = self._append_error

    def _keep_on_site(self, found: FoundImage) -> bool:
        """Whether an image is on a source's domain (or a subdomain): like Scrapy's offsite
        filter, but counted and logged."""
        host = (urlsplit(found.url).hostname or "").lower()
        if not self.image_domains or any(
                host == d or host.endswith("." + d) for d in self.image_domains):
            return True
        self.crawler.stats.inc_value(stat.BLOCKED)
        self.crawler.stats.inc_value(stat.OFFSITE)
        logger.info("not fetched (off-site; add its domain to allowed_domains): %s", found.url)
        return False

    # -- start ------------------------------------------------------------------------

    async def start(self) -> AsyncIterator[scrapy.Request]:
        # With a job folder, Scrapy keeps ``self.state`` across a pause: the limits' counters
        # go on from where they were, and the queue on disk already holds the rest.
        state = getattr(self, "state", None)
        if state is None:
            self.state = state = {}
        if not self.shared:
            self.pages_requested = state.setdefault("pages_requested", self.pages_requested)
            self.images_found = state.setdefault("images_found", self.images_found)
        self._yielded = state.setdefault("yielded", self._yielded)
        if state.get("started"):
            logger.info("resuming a paused crawl from its job folder")
            return
        if not self._seeder():  # another worker asked for the start pages
            state["started"] = True
            return
        for name, source in self.sources.items():
            for label, cls in self.classes.items():
                for step in source.start(label, cls.queries):
                    # a resumed crawl yields them again; the seen filter drops them
                    yield self._step_request(name, label, step)
        state["started"] = True

    def _step_request(self, source: str, label: str, step: Step,
                      response: Response | None = None) -> scrapy.Request:
        if step.page:
            self.pages_requested.add((source, label))
        kwargs: dict[str, Any] = {"callback": self.parse_step, "errback": self.page_failed,
                                  "cb_kwargs": {"source": source, "label": label,
                                                "state": step.state, "page": step.page}}
        if step.api:
            # A documented API is called under its own usage policy, not robots.txt, and may
            # be on any host; images it names are fetched under the usual rules.
            meta: dict[str, Any] = {"dont_obey_robotstxt": True, "allow_offsite": True}
            token_env = self.sources[source].token_env
            if token_env:
                meta[AUTH_ENV_META] = token_env  # the token itself is never in a request
                meta[AUTH_HOST_META] = urlsplit(step.url).netloc
            kwargs.update(meta=meta, headers={"Accept": "application/json"})
        if response is not None:
            return response.follow(step.url, **kwargs)
        return scrapy.Request(step.url, **kwargs)

    # -- pages ------------------------------------------------------------------------

    def _page_opted_out(self, response: Response) -> bool:
        why = opted_out(response, self.opt_out, self.crawler.settings.get("BOT_NAME", "happysad"))
        if why:
            self.crawler.stats.inc_value(stat.OPTED_OUT_PAGES)
            logger.info("images of %s not taken: the page opts out (%s)", response.url, why)
        return bool(why)

    def parse_step(self, response: Response, source: str, label: str, state: dict[str, Any],
                   page: bool) -> Iterator[scrapy.Request]:
        """One answer of a source: its images (unless the page opts out), then what it
        links to."""
        plugin = self.sources[source]
        if page:
            self.crawler.stats.inc_value(stat.PAGES + label)
            self.crawler.stats.inc_value(stat.PAGES_BY_SOURCE + source)
        take_images = not (plugin.html_pages and self._page_opted_out(response))
        try:
            for found in plugin.parse(response, state, _Progress(self, (source, label))):
                if isinstance(found, Step):
                    yield self._step_request(source, label, found, response)
                elif take_images and (plugin.images_anywhere or self._keep_on_site(found)):
                    request = self._image_request(source, label, state["query"], found,
                                                  allow_offsite=plugin.images_anywhere)
                    if request is not None:
                        yield request
        except ApiError as err:
            self._record_error(response.url, response.url, label, "api_error", str(err))

    # -- images -----------------------------------------------------------------------

    def _image_request(self, source: str, label: str, query: str, found: FoundImage,
                       allow_offsite: bool = False) -> scrapy.Request | None:
        stats = self.crawler.stats
        url = canonical(found.url, self.aliases)
        if (label, url) in self.known:
            stats.inc_value(stat.IMAGES_KNOWN)
            return None
        if (label, url) in self._yielded:
            return None
        if self.images_found.add((source, label)) > self.sources[source].params.max_images:
            stats.inc_value(stat.OVER_IMAGE_LIMIT + label)
            return None
        self._yielded.add((label, url))
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
            self.crawler.stats.inc_value(stat.OPTED_OUT)
            logger.info("not stored: %s opts out (%s)", response.url, why)
            return
        yield ImageItem(
            url=ref["url"], page_url=ref["page_url"], label=ref["label"], source=ref["source"],
            query=ref["query"], licence=ref["licence"], licence_url=ref["licence_url"],
            creator=ref["creator"], attribution=ref["attribution"], body=response.body,
            final_url=response.url,
            content_type=response.headers.get(b"Content-Type", b"").decode("latin-1"))

    def _failure_kind(self, failure: Failure) -> tuple[str, str] | None:
        """The error kind and detail of a failed request, pages and images alike; None when
        it was refused (robots.txt or the address guard), which counts as blocked."""
        if failure.check(HttpError):  # (an IgnoreRequest too: test it first)
            status = failure.value.response.status
            return f"http_{status}", f"HTTP {status}"
        if failure.check(RedirectLoopError):  # (IgnoreRequests too, but failures, not refusals)
            return "redirect_loop", str(failure.value)
        if failure.check(TooManyRedirectsError):
            return "too_many_redirects", str(failure.value)
        if failure.check(IgnoreRequest):
            self.crawler.stats.inc_value(stat.BLOCKED)
            logger.info("not fetched (%s): %s", failure.value or "filtered",
                        failure.request.url)  # type: ignore[attr-defined]
            return None
        if failure.check(DownloadCancelledError, CancelledError):  # a body over max_bytes
            return "too_large", str(failure.value) or "download cancelled (over " \
                "scrape.crawl.max_bytes)"
        return type(failure.value).__name__, str(failure.value) or repr(failure.value)

    def image_failed(self, failure: Failure) -> None:
        found = self._failure_kind(failure)
        if found is not None:
            self._fail(failure.request.cb_kwargs["ref"], *found)  # type: ignore[attr-defined]

    def page_failed(self, failure: Failure) -> None:
        request = failure.request  # type: ignore[attr-defined]
        found = self._failure_kind(failure)
        if found is not None:  # under the URL the crawl asked for, the first of any redirects
            asked = request.meta.get("redirect_urls", [request.url])[0]
            self._record_error(asked, asked, request.cb_kwargs.get("label", ""), *found)

    def _fail(self, ref: dict[str, Any], kind: str, detail: str) -> None:
        self._record_error(ref["url"], ref["page_url"], ref["label"], kind, detail)

    def _record_error(self, url: str, page_url: str, label: str, kind: str, detail: str) -> None:
        """Count, log and append one error line at once, so a paused crawl keeps them."""
        stats = self.crawler.stats
        stats.inc_value(stat.ERRORS)
        stats.inc_value(stat.ERRORS_BY_KIND + kind)
        logger.warning("not stored (%s): %s (%s)", kind, url, detail)
        self._write_error(json.dumps(
            {"url": canonical(url, self.aliases), "page_url": canonical(page_url, self.aliases),
             "label": label, "error": kind, "detail": detail}, sort_keys=True))

    def _append_error(self, line: str) -> None:
        if self.errors_path is not None:
            append_lines(self.errors_path, [line], sync=False)
