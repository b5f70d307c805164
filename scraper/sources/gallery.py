"""Any image-search or gallery site, described in params by URLs and CSS/XPath selectors.

Start pages per class, or a search URL template filled with each of the class's
queries. A result page gives its images (``image_selector``), links to detail
pages that hold the full-size image (``detail_selector``, then
``detail_image_selector``), and one next page (``next_page_selector``) while the
class has fewer than ``max_pages`` pages. Images stay on the start URLs' hosts
and ``allowed_domains``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, ClassVar
from urllib.parse import quote_plus, urlsplit

from parsel import SelectorList
from scrapy.http import Response

from pipeline.config.scrape import GallerySource
from scraper.markup import element_url, select
from scraper.sources.base import FoundImage, Parsed, Progress, Step, WebSource

logger = logging.getLogger(__name__)


class Gallery(WebSource):
    kind: ClassVar[str] = "gallery"
    params_model = GallerySource
    html_pages = True
    params: GallerySource

    def image_domains(self) -> list[str]:
        p = self.params
        urls = [*(u for urls in p.start_urls.values() for u in urls), p.search_url or ""]
        return [h for h in {urlsplit(u).hostname for u in urls} | set(p.allowed_domains) if h]

    def start(self, label: str, queries: list[str]) -> Iterator[Step]:
        query = queries[0] if queries else ""
        for url in self.params.start_urls.get(label, []):
            yield Step(url, {"query": query})
        if self.params.search_url:
            for q in queries:
                yield Step(self.params.search_url.replace("{query}", quote_plus(q)), {"query": q})

    def parse(self, response: Response, state: dict[str, Any], progress: Progress) -> Parsed:
        if state.get("detail"):
            yield from self._images(response, self.params.detail_image_selector or "img")
            return
        yield from self._images(response, self.params.image_selector)
        detail = {**state, "detail": True}
        if self.params.detail_selector:
            for link in self._select(response, self.params.detail_selector):
                href = element_url(link)
                if href:
                    yield Step(href, detail, page=False)
        next_selector = self.params.next_page_selector
        if next_selector and progress.pages < self.params.max_pages:
            for link in self._select(response, next_selector)[:1]:
                href = element_url(link)
                if href:
                    yield Step(href, state)

    def _select(self, response: Response, selector: str) -> SelectorList:
        """The elements ``selector`` matches, at most ``scrape.crawl.max_page_elements``: a page
        of 100,000 images is parsed in a second, not minutes (each element is work)."""
        found = select(response, selector)
        cap = self.crawl.max_page_elements
        if len(found) > cap:
            logger.warning("%s: %d elements match %r; taking the first %d "
                           "(scrape.crawl.max_page_elements)", response.url, len(found),
                           selector, cap)
        return found[:cap]

    def _images(self, response: Response, selector: str) -> Iterator[FoundImage]:
        for element in self._select(response, selector):
            href = element_url(element)
            if href:
                yield FoundImage(url=response.urljoin(href),  # honours <base href>
                                 page_url=response.url, licence=self.params.licence,
                                 attribution=self.params.attribution)
