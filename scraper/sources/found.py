"""An image a source found, before it is fetched."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FoundImage:
    url: str
    page_url: str  # the page (or API record) that named it: its source page for API images
    licence: str | None = None
    licence_url: str | None = None
    creator: str | None = None
    attribution: str | None = None
