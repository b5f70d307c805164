"""Source kinds as plugins: one module per kind, each with one :class:`WebSource` subclass.

A kind's module reads its typed params (its model in :mod:`pipeline.config.scrape`),
names the first requests for a class, and parses each answer into images and
further requests. The spider (:mod:`scraper.spiders.images`) does the rest for
every kind alike: counting, limits, opt-outs, errors, fetching and storing.
Adding a kind touches its module here, its params model and its test; the
registry finds the module by itself.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from scraper.sources.base import ApiError, Parsed, Progress, Step, WebSource

__all__ = ["ApiError", "Parsed", "Progress", "Step", "WebSource", "registry"]


@cache
def registry() -> dict[str, type[WebSource]]:
    """Every web source kind of this package, by its ``kind`` name."""
    kinds: dict[str, type[WebSource]] = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for value in vars(module).values():
            if (isinstance(value, type) and issubclass(value, WebSource)
                    and value is not WebSource and value.__module__ == module.__name__):
                kinds[value.kind] = value
    return kinds
