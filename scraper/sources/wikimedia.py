"""Wikimedia Commons (any MediaWiki) through the Action API.

Files of a category (``generator=categorymembers&gcmtype=file``) or found by a
search of the File namespace (``generator=search&gsrnamespace=6``), with
``prop=imageinfo`` giving each file's URL, description page, optional thumbnail
(``iiurlwidth``) and ``extmetadata``: ``LicenseShortName``, ``LicenseUrl`` and
``Artist`` (HTML). Paging follows the answer's ``continue`` object.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator
from typing import Any, ClassVar
from urllib.parse import urlencode

from scrapy.http import Response

from pipeline.config.scrape import WikimediaSource
from scraper.sources.base import ApiError, FoundImage, Parsed, Progress, Step, WebSource

_TAG = re.compile(r"<[^>]+>")


class Wikimedia(WebSource):
    kind: ClassVar[str] = "wikimedia"
    params_model = WikimediaSource
    images_anywhere = True
    params: WikimediaSource

    def start(self, label: str, queries: list[str]) -> Iterator[Step]:
        for category in self.params.categories.get(label, []):
            yield Step(query_url(self.params, category=category),
                       {"query": category, "batch": 1, "category": True}, api=True)
        if self.params.search:
            for q in queries:
                yield Step(query_url(self.params, search=q),
                           {"query": q, "batch": 1, "category": False}, api=True)

    def parse(self, response: Response, state: dict[str, Any], progress: Progress) -> Parsed:
        data = json.loads(response.text)
        if "error" in data:
            raise ApiError(str(data["error"].get("info") or data["error"]))
        images, cont = parse_batch(data)
        yield from images
        if (cont and state["batch"] < self.params.max_batches
                and progress.images < self.params.max_images):
            where = {"category": state["query"]} if state["category"] else {"search": state["query"]}
            yield Step(query_url(self.params, cont=cont, **where),
                       {**state, "batch": state["batch"] + 1}, api=True)


def query_url(config: WikimediaSource, *, category: str | None = None,
              search: str | None = None, cont: dict[str, Any] | None = None) -> str:
    params: dict[str, Any] = {
        "action": "query", "format": "json", "formatversion": "2", "prop": "imageinfo",
        "iiprop": "url|size|mime|extmetadata",
        "iiextmetadatafilter": "LicenseShortName|LicenseUrl|Artist|Credit|UsageTerms",
    }
    if config.thumb_width:
        params["iiurlwidth"] = config.thumb_width
    if category is not None:
        params.update({"generator": "categorymembers", "gcmtitle": category, "gcmtype": "file",
                       "gcmlimit": config.batch_size})
    else:
        params.update({"generator": "search", "gsrsearch": search, "gsrnamespace": "6",
                       "gsrlimit": config.batch_size})
    params.update(cont or {})
    return f"{config.api_url}?{urlencode(params)}"


def plain_text(value: str | None) -> str | None:
    """extmetadata values are HTML fragments: the text of one."""
    if not value:
        return None
    text = " ".join(html.unescape(_TAG.sub(" ", value)).split())
    return text or None


def _meta(info: dict[str, Any], key: str) -> str | None:
    value = (info.get("extmetadata") or {}).get(key) or {}
    return value.get("value") if isinstance(value, dict) else None


def parse_batch(data: dict[str, Any]) -> tuple[list[FoundImage], dict[str, Any] | None]:
    """The image files of one answer, and the ``continue`` parameters for the next (or None)."""
    pages = (data.get("query") or {}).get("pages") or []
    if isinstance(pages, dict):  # formatversion=1 keys pages by id
        pages = list(pages.values())
    images = []
    for page in sorted(pages, key=lambda p: p.get("index", 0)):
        for info in page.get("imageinfo") or []:
            if not str(info.get("mime", "image/")).startswith("image/"):
                continue
            url = info.get("thumburl") or info.get("url")
            if not url:
                continue
            creator = plain_text(_meta(info, "Artist"))
            licence = plain_text(_meta(info, "LicenseShortName"))
            images.append(FoundImage(
                url=url, page_url=info.get("descriptionurl") or url, licence=licence,
                licence_url=plain_text(_meta(info, "LicenseUrl")), creator=creator,
                attribution=", ".join(p for p in (creator, licence, "via Wikimedia Commons") if p)))
    cont = data.get("continue")
    return images, dict(cont) if cont else None
