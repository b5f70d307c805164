"""The item the spider yields: one fetched image with its label, origin and licence."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ImageItem:
    url: str
    page_url: str
    label: str
    source: str
    body: bytes = field(repr=False)  # a log line names the image, never prints its bytes
    final_url: str
    content_type: str = ""
    query: str = ""
    licence: str | None = None
    licence_url: str | None = None
    creator: str | None = None
    attribution: str | None = None
