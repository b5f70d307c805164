"""Finding image URLs in HTML: selectors, srcset, lazy-loading attributes, <picture>, CSS."""

from __future__ import annotations

import re

from parsel import Selector, SelectorList
from scrapy.http import Response

from pipeline.config.scrape import is_xpath

_SRCSET_CANDIDATE = re.compile(r"^\s*(\S+)(?:\s+(\d+(?:\.\d+)?)([wx]))?\s*$")
_CSS_URL = re.compile(r"""background(?:-image)?\s*:[^;]*?url\(\s*(['"]?)(.*?)\1\s*\)""", re.I)
# Attributes lazy-loading scripts keep the real image in, most specific first.
_SRCSET_ATTRS = ("data-srcset", "srcset")
_URL_ATTRS = ("data-src", "data-original", "data-lazy-src", "src", "href")


def select(node: Selector | Response, selector: str) -> SelectorList:
    """CSS by default; XPath when the selector starts like one."""
    if is_xpath(selector):
        return node.xpath(selector)
    return node.css(selector)


def srcset_candidates(srcset: str) -> list[tuple[str, float]]:
    """(url, width or density) of each candidate of a srcset attribute."""
    found = []
    for part in re.split(r",\s+|,(?=\S+\s)", srcset.strip()):
        match = _SRCSET_CANDIDATE.match(part)
        if match:
            found.append((match.group(1).rstrip(","), float(match.group(2) or 1)))
    return found


def largest_srcset_candidate(srcset: str) -> str | None:
    """The URL with the largest width (or density) descriptor in a srcset attribute."""
    candidates = srcset_candidates(srcset)
    return max(candidates, key=lambda c: c[1])[0] if candidates else None


def _usable(value: str | None) -> str | None:
    value = (value or "").strip()
    return value if value and not value.startswith(("data:", "javascript:", "#")) else None


def element_url(element: Selector) -> str | None:
    """The image URL an element points to.

    A ``<picture>`` gives the largest candidate of its ``<source>``s and ``<img>``; an
    element gives its largest ``srcset``/``data-srcset`` candidate, else ``data-src``
    (and other lazy-loading attributes), ``src`` or ``href``, else the ``url(...)`` of a
    ``background-image`` in its ``style`` attribute.
    """
    tag = element.root.tag if hasattr(element.root, "tag") else ""
    if tag == "picture":
        best: tuple[str, float] | None = None
        for child in element.xpath("./source | ./img"):
            for name in _SRCSET_ATTRS:
                for candidate in srcset_candidates(child.attrib.get(name, "")):
                    if _usable(candidate[0]) and (best is None or candidate[1] > best[1]):
                        best = candidate
        if best:
            return best[0]
        img = element.xpath("./img")
        return element_url(img[0]) if img else None
    attrs = element.attrib
    for name in _SRCSET_ATTRS:
        candidate = _usable(largest_srcset_candidate(attrs.get(name, "")))
        if candidate:
            return candidate
    for name in _URL_ATTRS:
        value = _usable(attrs.get(name))
        if value:
            return value
    match = _CSS_URL.search(attrs.get("style", ""))
    return _usable(match.group(2)) if match else None
