"""Openverse's image search API (https://api.openverse.org/v1/images/).

One GET per page: ``q``, ``page``, ``page_size``, and the ``license`` and
``license_type`` filters (comma-separated). The JSON answer has ``page_count``
and ``results``; each result names the image (``url``), its source page
(``foreign_landing_url``), ``license``/``license_version``/``license_url``,
``creator`` and a ready-made ``attribution``. Anonymous callers get 20 results
a page; a bearer token lifts the rate limit.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, ClassVar
from urllib.parse import urlencode

from scrapy.http import Response

from pipeline.config.scrape import OpenverseSource
from scraper.sources.base import FoundImage, Parsed, Progress, Step, WebSource


class Openverse(WebSource):
    kind: ClassVar[str] = "openverse"
    params_model = OpenverseSource
    images_anywhere = True
    params: OpenverseSource

    def start(self, label: str, queries: list[str]) -> Iterator[Step]:
        for q in queries:
            yield Step(page_url(self.params, q, 1), {"query": q, "page": 1}, api=True)

    def parse(self, response: Response, state: dict[str, Any], progress: Progress) -> Parsed:
        images, page_count = parse_page(json.loads(response.text))
        yield from images
        page = state["page"]
        if (page < min(page_count, self.params.max_pages) and images
                and progress.images < self.params.max_images):
            yield Step(page_url(self.params, state["query"], page + 1),
                       {**state, "page": page + 1}, api=True)


def page_url(params: OpenverseSource, query: str, page: int) -> str:
    query_params: dict[str, str | int] = {"q": query, "page": page, "page_size": params.page_size}
    if params.licences:
        query_params["license"] = ",".join(params.licences)
    if params.licence_types:
        query_params["license_type"] = ",".join(params.licence_types)
    if not params.mature:
        query_params["mature"] = "false"
    return f"{params.api_url}?{urlencode(query_params)}"


def licence_name(result: dict[str, Any]) -> str | None:
    """Openverse's code and version as a readable name: ``by-sa`` 4.0 -> ``CC BY-SA 4.0``."""
    code = (result.get("license") or "").strip()
    if not code:
        return None
    version = (result.get("license_version") or "").strip()
    name = {"cc0": "CC0", "pdm": "Public Domain Mark"}.get(code.lower(), f"CC {code.upper()}")
    return f"{name} {version}".strip()


def parse_page(data: dict[str, Any]) -> tuple[list[FoundImage], int]:
    """The images of one answer page, and the number of pages the search has."""
    images = []
    for result in data.get("results") or []:
        url = result.get("url")
        if not url:
            continue
        images.append(FoundImage(
            url=url,
            page_url=result.get("foreign_landing_url") or result.get("detail_url") or url,
            licence=licence_name(result), licence_url=result.get("license_url"),
            creator=result.get("creator"), attribution=result.get("attribution")))
    return images, int(data.get("page_count") or 0)
