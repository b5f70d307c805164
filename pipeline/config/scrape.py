"""The ``demo_site`` and ``scrape`` sections: the demo site to generate, the classes, the sources and
how politely to crawl them."""

from __future__ import annotations

import re
from typing import Annotated, Literal, Self

from pydantic import Field, field_validator, model_validator

from pipeline.config.loader import Fraction, Positive, Section


class DemoSiteParams(Section):
    seed: int
    images_per_class: Annotated[int, Field(ge=8)]
    min_side: Annotated[int, Field(ge=32)]
    max_side: Positive
    jpeg_quality: tuple[Annotated[int, Field(ge=1, le=100)], Annotated[int, Field(ge=1, le=100)]]
    png_fraction: Fraction
    results_per_page: Positive
    slow_response_s: Annotated[float, Field(ge=0.0)]
    copies_per_class: Annotated[int, Field(ge=1)]  # planted sets of four copies, per class
    mislabelled_fraction: Annotated[float, Field(ge=0.0, le=0.2)]  # faces served under the other class

    @model_validator(mode="after")
    def _ranges(self) -> Self:
        if self.images_per_class < 6 + 4 * self.copies_per_class:
            raise ValueError(f"images_per_class must be at least 6 + 4 x copies_per_class "
                             f"({6 + 4 * self.copies_per_class}): each copy needs its original")
        if self.images_per_class - round(self.mislabelled_fraction * self.images_per_class) < \
                6 + 4 * self.copies_per_class:
            raise ValueError("mislabelled_fraction leaves too few faces for the planted copies' "
                             "originals; lower it or raise images_per_class")
        if self.min_side > self.max_side:
            raise ValueError("min_side must not exceed max_side")
        if self.jpeg_quality[0] > self.jpeg_quality[1]:
            raise ValueError("jpeg_quality must be [low, high]")
        return self


DEMO_PLACEHOLDER = "{demo}"


def is_xpath(selector: str) -> bool:
    return selector.lstrip().startswith(("/", "(", "./"))


def _check_selector(selector: str | None) -> str | None:
    if selector:
        from parsel import Selector  # here, not at the top: stage workers import this module
        from parsel.csstranslator import css2xpath

        try:
            if is_xpath(selector):
                Selector(text="<html></html>").xpath(selector)
            else:
                css2xpath(selector)
        except Exception as err:  # noqa: BLE001 - parsel raises several types
            raise ValueError(f"cannot parse selector {selector!r} ({err})") from None
    return selector


class ClassParams(Section):
    queries: list[Annotated[str, Field(min_length=1)]] = []


class _Source(Section):
    enabled: bool = True
    max_images: Positive  # per class


class GallerySource(_Source):
    """Any image-search or gallery site, described by URLs and selectors."""

    kind: Literal["gallery"]
    start_urls: dict[str, list[str]] = {}
    search_url: str | None = None  # a template with {query}, used for each of a class's queries
    image_selector: str
    detail_selector: str | None = None
    detail_image_selector: str | None = None
    next_page_selector: str | None = None
    max_pages: Positive  # per class
    licence: str | None = None
    attribution: str | None = None
    allowed_domains: list[str] = []

    _selectors = field_validator("image_selector", "detail_selector", "detail_image_selector",
                                 "next_page_selector")(_check_selector)

    @model_validator(mode="after")
    def _has_urls(self) -> Self:
        if not self.start_urls and not self.search_url:
            raise ValueError("give start_urls (per class) or a search_url template")
        if self.search_url and "{query}" not in self.search_url:
            raise ValueError(f"search_url {self.search_url!r} has no {{query}} placeholder")
        return self


class OpenverseSource(_Source):
    """Openly licensed images through the Openverse API (api.openverse.org)."""

    kind: Literal["openverse"]
    api_url: str
    licences: list[str] = []          # Openverse `license` codes (cc0, pdm, by, by-sa...); [] = any
    licence_types: list[Literal["commercial", "modification"]] = []
    page_size: Annotated[int, Field(ge=1, le=500)]
    max_pages: Positive               # per query
    mature: bool = False
    token_env: str | None = None      # the environment variable that may hold a bearer token


class WikimediaSource(_Source):
    """Files of Wikimedia Commons (or any MediaWiki) by category and by search."""

    kind: Literal["wikimedia"]
    api_url: str
    categories: dict[str, list[str]] = {}  # per class: "Category:..." titles
    search: bool = True                    # also search the File namespace for the class's queries
    batch_size: Annotated[int, Field(ge=1, le=500)]
    max_batches: Positive                  # per category or query
    thumb_width: Annotated[int, Field(ge=0)]  # fetch a thumbnail this wide; 0 = the original file


class FolderSource(_Source):
    """Images a user already has: ``<path>/<class>/*``, imported as if scraped."""

    kind: Literal["folder"]
    path: str
    licence: str | None = None
    attribution: str | None = None


Source = Annotated[GallerySource | OpenverseSource | WikimediaSource | FolderSource,
                   Field(discriminator="kind")]


class DomainLimit(Section):
    concurrency: Positive
    delay_s: Annotated[float, Field(ge=0.0)] = 0.0


class CrawlParams(Section):
    obey_robots: bool
    autothrottle: bool
    autothrottle_start_delay_s: Annotated[float, Field(ge=0.0)]
    autothrottle_max_delay_s: Annotated[float, Field(gt=0.0)]
    autothrottle_target_concurrency: Annotated[float, Field(gt=0.0)]
    concurrent_requests: Positive
    concurrent_requests_per_domain: Positive
    domain_limits: dict[str, DomainLimit] = {}
    download_delay_s: Annotated[float, Field(ge=0.0)]
    download_timeout_s: Annotated[float, Field(gt=0.0)]
    max_bytes: Positive
    max_page_elements: Positive  # per selector per page: parsing stays short
    retries: Annotated[int, Field(ge=0)]
    user_agent: Annotated[str, Field(min_length=1)]
    contact: str = ""
    opt_out: list[str]
    allow_private_hosts: list[str] = []
    job_dir: str | None = None
    progress_every_s: Annotated[float, Field(gt=0.0)]
    # A crawl shared through Redis (HAPPYSAD_CRAWL_REDIS): crawler processes the stage starts,
    # how long the queue must stay empty, every worker idle, before a worker leaves, and how
    # long a worker that stopped answering keeps its requests before they are queued again.
    shared_workers: Positive = 2
    shared_idle_close_s: Annotated[float, Field(ge=0.0)] = 2.0
    shared_lease_s: Annotated[float, Field(gt=0.0, le=3600.0)] = 30.0

    @field_validator("allow_private_hosts")
    @classmethod
    def _host_ports(cls, hosts: list[str]) -> list[str]:
        for host in hosts:
            if not re.fullmatch(r"[^\s/:]+:\d+|\[[0-9a-fA-F:.]+\]:\d+", host):
                raise ValueError(f"{host!r} is not host:port (e.g. 127.0.0.1:8000)")
        return hosts


CLASS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


class ScrapeParams(Section):
    demo_site: bool
    classes: dict[str, ClassParams]
    sources: Annotated[dict[str, Source], Field(min_length=1)]
    crawl: CrawlParams

    @field_validator("classes")
    @classmethod
    def _two_simple_names(cls, classes: dict[str, ClassParams]) -> dict[str, ClassParams]:
        # The CNN has one sigmoid output: it tells exactly two classes apart.
        if len(classes) != 2:
            raise ValueError(f"the model is binary: give exactly two classes, not {len(classes)} "
                             f"({', '.join(classes) or 'none'})")
        for name in classes:  # a class name becomes a folder under data/raw
            if not CLASS_NAME.fullmatch(name):
                raise ValueError(f"class name {name!r} is not a simple name (letters, digits, "
                                 "'_' or '-', starting with a letter or digit)")
        return classes

    def enabled_sources(self) -> dict[str, Source]:
        return {name: source for name, source in self.sources.items() if source.enabled}

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if not self.enabled_sources():
            raise ValueError("every source is disabled; enable one under scrape.sources")
        for name, source in self.enabled_sources().items():
            per_class = {"gallery": "start_urls", "wikimedia": "categories"}.get(source.kind)
            unknown = set(getattr(source, per_class)) - set(self.classes) if per_class else set()
            if unknown:
                raise ValueError(f"sources.{name}.{per_class} names {', '.join(sorted(unknown))}, "
                                 f"which is not a class; classes are {', '.join(self.classes)}")
            urls = [u for urls in getattr(source, "start_urls", {}).values() for u in urls]
            urls += [getattr(source, "search_url", None) or ""]
            if not self.demo_site and any(DEMO_PLACEHOLDER in u for u in urls):
                raise ValueError(f"sources.{name} uses {DEMO_PLACEHOLDER} but demo_site is off; "
                                 f"turn it on or set sources.{name}.enabled to false")
        return self
