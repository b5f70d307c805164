"""What the scrape stage and its crawler subprocess agree on: exit statuses and stat names.

The crawler (``python -m scraper.crawl``) counts into Scrapy's stats under these
names and writes them to a JSON file; the stage reads that file for its report.
A name used with a suffix (``PAGES + label``) is a prefix and ends with ``/``.
"""

from __future__ import annotations

FINISHED_EXIT = 0
PAUSED_EXIT = 3  # Ctrl-C or one SIGTERM: Scrapy finished what was in flight and stopped

PAGES = "happysad/pages/"  # + class: result pages and API answers parsed
PAGES_BY_SOURCE = "happysad/pages_by_source/"  # + source
IMAGES_STORED = "happysad/images_stored"
IMAGES_STORED_BY_SOURCE = "happysad/images_stored_by_source/"  # + source
FILES_NEW = "happysad/files_new"  # stored images whose bytes data/raw did not have
FILES_EXISTING = "happysad/files_existing"
IMAGES_KNOWN = "happysad/images_known"  # found again: the manifest already has (class, URL)
OVER_IMAGE_LIMIT = "happysad/over_image_limit/"  # + class: not fetched, a source's max_images
BLOCKED = "happysad/blocked"  # robots.txt, the address guard, or off-site
OFFSITE = "happysad/offsite"
REFUSED_ADDRESS = "happysad/refused_address"  # the address guard (loopback, private, not http)
OPTED_OUT = "happysad/opted_out"  # an image whose headers opt out
OPTED_OUT_PAGES = "happysad/opted_out_pages"  # a page whose markup or headers opt out
ERRORS = "happysad/errors"
ERRORS_BY_KIND = "happysad/errors/"  # + kind: http_404, too_large, TimeoutError, ...
PEAK_RSS_MB = "happysad/peak_rss_mb"  # the crawl process's peak resident memory


def suffixed(stats: dict[str, object], prefix: str) -> dict[str, int]:
    """The counts under one prefix, by suffix, sorted: ``{"happy": 12, "sad": 9}``."""
    return {k.removeprefix(prefix): int(v) for k, v in sorted(stats.items())  # type: ignore[call-overload]
            if k.startswith(prefix)}
