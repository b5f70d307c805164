"""The item a spider yields: one image URL with its label and where it was found."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ImageItem:
    url: str
    page_url: str
    label: str
    source: str
    query: str = ""
    licence: str | None = None
    attribution: str | None = None
