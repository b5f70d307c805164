"""What one scrape did, from the crawl's stats and the folder imports, and what data/raw
holds after it; ``report.json`` is the part DVC tracks."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config.scrape import ScrapeParams
from pipeline.contracts import crawl as stat
from pipeline.contracts.raw import read_manifest
from pipeline.runtime.errors import UserError
from pipeline.runtime.files import write_atomic
from pipeline.scrape.crawl_config import web_sources
from pipeline.scrape.folder import FolderImport


@dataclass(frozen=True)
class ScrapeReport:
    """What one crawl did, and what data/raw holds after it."""

    pages: dict[str, int]
    images_stored: int
    new_files: int
    already_had: int
    blocked: int
    opted_out: int
    links_refused: int  # folder sources' symbolic links that lead out of their folder
    errors: int
    errors_by_kind: dict[str, int]
    stored_by_source: dict[str, int]
    raw_records: dict[str, int]
    raw_records_by_source: dict[str, int]
    raw_files: dict[str, int]
    elapsed_s: float

    def details(self) -> dict[str, object]:
        """What DVC tracks: the state of data/raw and of the sources, not this run's
        activity or timing, so a forced rerun that finds nothing new changes nothing."""
        return {"raw_records": self.raw_records, "raw_records_by_source": self.raw_records_by_source,
                "raw_files": self.raw_files, "pages": self.pages, "blocked": self.blocked,
                "opted_out": self.opted_out, "links_refused": self.links_refused,
                "errors": self.errors,
                "errors_by_kind": self.errors_by_kind}

    def write(self, report_dir: Path) -> None:
        write_atomic(report_dir / "report.json", json.dumps(self.details(), indent=2) + "\n")


def raw_summary(raw_dir: Path) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    """Manifest records per class and per source, and files per class folder."""
    records = list(read_manifest(raw_dir))
    by_label = Counter(r.label for r in records)
    by_source = Counter(r.source for r in records)
    files = {d.name: sum(1 for f in d.iterdir() if not f.name.startswith("."))
             for d in sorted(raw_dir.iterdir()) if d.is_dir()}
    return dict(sorted(by_label.items())), dict(sorted(by_source.items())), files


def refuse_silent_sources(params: ScrapeParams, stats: dict[str, Any],
                          by_source: dict[str, int]) -> None:
    """A web source that the address guard refused outright gave no page and no image: say so
    now, not later in clean as "no usable image"."""
    refused = int(stats.get(stat.REFUSED_ADDRESS, 0))
    if not refused:
        return
    silent = [name for name in web_sources(params)
              if not int(stats.get(stat.PAGES_BY_SOURCE + name, 0)) and not by_source.get(name)]
    if silent:
        raise UserError(f"source {', '.join(silent)} gave no page and no image: the address guard "
                        f"refused {refused} request(s) (a loopback or private host, or not "
                        "http(s)); if the host is yours, add its host:port to "
                        "scrape.crawl.allow_private_hosts, else fix the source's URLs")


def build_report(params: ScrapeParams, stats: dict[str, Any], imported: dict[str, FolderImport],
                 raw_dir: Path, elapsed_s: float) -> ScrapeReport:
    """The report of a crawl (its stats) and of folder imports, over what data/raw holds."""
    records, by_source, files = raw_summary(raw_dir)
    refuse_silent_sources(params, stats, by_source)
    stored_by_source = stat.suffixed(stats, stat.IMAGES_STORED_BY_SOURCE)
    stored_by_source.update({name: r.stored for name, r in imported.items()})
    errors_by_kind = Counter(stat.suffixed(stats, stat.ERRORS_BY_KIND))
    errors_by_kind["too_large"] += sum(r.too_large for r in imported.values())

    def count(*keys: str) -> int:
        return sum(int(stats.get(key, 0)) for key in keys)

    return ScrapeReport(
        pages={label: count(stat.PAGES + label) for label in params.classes},
        images_stored=count(stat.IMAGES_STORED) + sum(r.stored for r in imported.values()),
        new_files=count(stat.FILES_NEW) + sum(r.new_files for r in imported.values()),
        already_had=count(stat.IMAGES_KNOWN) + sum(r.already_had for r in imported.values()),
        blocked=count(stat.BLOCKED),
        opted_out=count(stat.OPTED_OUT, stat.OPTED_OUT_PAGES),
        links_refused=sum(r.links_refused for r in imported.values()),
        errors=sum(errors_by_kind.values()),  # each crawl error is counted under its kind too
        errors_by_kind={k: v for k, v in sorted(errors_by_kind.items()) if v},
        stored_by_source=stored_by_source,
        raw_records=records,
        raw_records_by_source=by_source,
        raw_files=files,
        elapsed_s=elapsed_s,
    )
