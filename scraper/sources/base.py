"""The interface every source kind implements, and what it hands the spider."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel
from scrapy.http import Response

from pipeline.config.scrape import CrawlParams


@dataclass(frozen=True)
class FoundImage:
    """An image a source found, before it is fetched."""

    url: str
    page_url: str  # the page (or API record) that named it: its source page for API images
    licence: str | None = None
    licence_url: str | None = None
    creator: str | None = None
    attribution: str | None = None


@dataclass(frozen=True)
class Step:
    """A request a source asks for; ``state`` comes back with its answer to ``parse``."""

    url: str
    state: dict[str, Any]  # plain data (a paused crawl keeps it in its queue); has "query"
    api: bool = False  # a documented API: its own usage policy instead of robots.txt, any host
    page: bool = True  # counts as a result page (a gallery's detail page does not)


class Progress(Protocol):
    """How far the crawl of one source and class has got, as the limits count it."""

    @property
    def pages(self) -> int: ...  # result pages requested so far

    @property
    def images(self) -> int: ...  # images found so far


Parsed = Iterator[FoundImage | Step]  # what ``parse`` yields, in the order to request them


class ApiError(Exception):
    """An API answered with an error instead of results; recorded as ``api_error``."""


class WebSource(ABC):
    """One kind of web source, over its typed params."""

    kind: ClassVar[str]
    params_model: ClassVar[type[BaseModel]]  # the model of its section in params.yaml
    images_anywhere: ClassVar[bool] = False  # images may be on any host (an API names them)
    html_pages: ClassVar[bool] = False  # its pages are HTML, which may opt out of AI use

    def __init__(self, params: Any, crawl: CrawlParams) -> None:
        self.params = params
        self.crawl = crawl  # the crawl's limits and politeness, shared by every source

    @classmethod
    def from_config(cls, data: dict[str, Any], crawl: CrawlParams) -> WebSource:
        """The source of one entry of the crawl config, its params checked again."""
        return cls(cls.params_model.model_validate(data), crawl)

    @property
    def token_env(self) -> str | None:
        """The environment variable that may hold a bearer token for the API."""
        return getattr(self.params, "token_env", None)

    def image_domains(self) -> list[str]:
        """Hosts (and their subdomains) its images may come from, when not ``images_anywhere``."""
        return []

    @abstractmethod
    def start(self, label: str, queries: list[str]) -> Iterable[Step]:
        """The first requests for one class."""

    @abstractmethod
    def parse(self, response: Response, state: dict[str, Any], progress: Progress) -> Parsed:
        """The images and further requests of one answer; may raise :class:`ApiError`."""
