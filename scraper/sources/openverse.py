"""Openverse's image search API (https://api.openverse.org/v1/images/).

One GET per page: ``q``, ``page``, ``page_size``, and the ``license`` and
``license_type`` filters (comma-separated). The JSON answer has ``page_count``
and ``results``; each result names the image (``url``), its source page
(``foreign_landing_url``), ``license``/``license_version``/``license_url``,
``creator`` and a ready-made ``attribution``. Anonymous callers get 20 results
a page; a bearer token lifts the rate limit.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from scraper.sources.found import FoundImage


def page_url(config: dict[str, Any], query: str, page: int) -> str:
    params: dict[str, str | int] = {"q": query, "page": page, "page_size": config["page_size"]}
    if config.get("licences"):
        params["license"] = ",".join(config["licences"])
    if config.get("licence_types"):
        params["license_type"] = ",".join(config["licence_types"])
    if not config.get("mature", False):
        params["mature"] = "false"
    return f"{config['api_url']}?{urlencode(params)}"


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
