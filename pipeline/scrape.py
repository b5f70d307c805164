"""The scrape stage: crawl the configured sources into data/raw, in a Scrapy subprocess.

When ``scrape.demo_site`` is on, the bundled demo site is generated (once per
config) and served on a free loopback port for the length of the crawl; start
URLs name it as ``{demo}``, and the manifest records its URLs that way too.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import UserError
from pipeline.params import DEMO_PLACEHOLDER, DemoSiteParams, ScrapeParams, load_params
from pipeline.raw import read_manifest
from scraper.demo.server import DemoSiteServer
from scraper.demo.site import DemoSiteConfig, ensure_site

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class ScrapeReport:
    """What one crawl did, and what data/raw holds after it."""

    pages: dict[str, int]
    images_stored: int
    new_files: int
    already_had: int
    blocked: int
    errors: int
    errors_by_kind: dict[str, int]
    raw_records: dict[str, int]
    raw_files: dict[str, int]
    elapsed_s: float

    def metrics(self) -> dict[str, object]:
        """What DVC tracks: the state of data/raw and of the sources, not this run's
        activity or timing, so a forced rerun that finds nothing new changes nothing."""
        return {"raw_records": self.raw_records, "raw_files": self.raw_files,
                "pages": self.pages, "blocked": self.blocked, "errors": self.errors,
                "errors_by_kind": self.errors_by_kind}


def crawl_config(params: ScrapeParams, raw_dir: Path, work: Path,
                  demo_url: str | None) -> dict[str, Any]:
    classes = {}
    for label, source in params.classes.items():
        data = source.model_dump()
        urls = data["start_urls"]
        if demo_url is not None:
            data["start_urls"] = [u.replace(DEMO_PLACEHOLDER, demo_url) for u in urls]
        classes[label] = data
    return {
        "source": "demo" if demo_url else "web",
        "classes": classes,
        "crawl": params.crawl.model_dump(),
        "raw_dir": str(raw_dir.resolve()),
        "errors_path": str(work / "errors.jsonl"),
        "stats_path": str(work / "stats.json"),
        "url_aliases": {demo_url: DEMO_PLACEHOLDER} if demo_url else {},
    }


def run_crawl_subprocess(config: dict[str, Any], work: Path) -> dict[str, Any]:
    """Run ``python -m scraper.crawl`` on ``config``; its log goes to our stderr."""
    work.mkdir(parents=True, exist_ok=True)
    config_path = work / "crawl.json"
    config_path.write_text(json.dumps(config, indent=1))
    result = subprocess.run([sys.executable, "-m", "scraper.crawl", str(config_path)],
                            check=False)
    stats_path = Path(config["stats_path"])
    if result.returncode != 0 or not stats_path.exists():
        raise UserError(f"the crawl failed (exit code {result.returncode}); its log above "
                        "says why. Data already stored in data/raw is kept; run again to resume")
    return json.loads(stats_path.read_text())


def _raw_summary(raw_dir: Path) -> tuple[dict[str, int], dict[str, int]]:
    records = Counter(r.label for r in read_manifest(raw_dir))
    files = {d.name: sum(1 for f in d.iterdir() if not f.name.startswith("."))
             for d in sorted(raw_dir.iterdir()) if d.is_dir()}
    return dict(sorted(records.items())), files


def scrape(params: ScrapeParams, demo: DemoSiteParams, raw_dir: Path, report_dir: Path,
           site_dir: Path) -> ScrapeReport:
    """Crawl every class's source into ``raw_dir``; write the crawl's report files."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    report_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="happysad-scrape-") as tmp:
        work = Path(tmp)
        if params.demo_site:
            ensure_site(site_dir, DemoSiteConfig(**demo.model_dump()))
            with DemoSiteServer(site_dir) as server:
                logger.info("demo site serving %s at %s", site_dir, server.base_url)
                stats = run_crawl_subprocess(crawl_config(params, raw_dir, work, server.base_url),
                                             work)
        else:
            stats = run_crawl_subprocess(crawl_config(params, raw_dir, work, None), work)
        errors_file = work / "errors.jsonl"
        errors_text = errors_file.read_text() if errors_file.exists() else ""
    (report_dir / "errors.jsonl").write_text(errors_text)
    records, files = _raw_summary(raw_dir)
    report = ScrapeReport(
        pages={label: int(stats.get(f"happysad/pages/{label}", 0)) for label in params.classes},
        images_stored=int(stats.get("happysad/images_stored", 0)),
        new_files=int(stats.get("happysad/files_new", 0)),
        already_had=int(stats.get("happysad/images_known", 0)),
        blocked=int(stats.get("happysad/blocked", 0)),
        errors=int(stats.get("happysad/errors", 0)),
        errors_by_kind={k.rsplit("/", 1)[1]: int(v) for k, v in sorted(stats.items())
                        if k.startswith("happysad/errors/")},
        raw_records=records,
        raw_files=files,
        elapsed_s=round(time.perf_counter() - started, 2),
    )
    (report_dir / "metrics.json").write_text(json.dumps(report.metrics(), indent=2) + "\n")
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--raw", type=Path, default=Path("data/raw"))
    parser.add_argument("--reports", type=Path, default=Path("reports/scrape"))
    parser.add_argument("--site-dir", type=Path, default=Path("data/demo_site"),
                        help="where the demo site is generated (default: %(default)s)")


def run(args: argparse.Namespace) -> None:
    params = load_params(args.params)
    report = scrape(params.scrape, params.demo_site, args.raw, args.reports, args.site_dir)
    logger.info("scrape: %d images stored (%d new files), %d already had, %d blocked, "
                "%d errors in %.1f s; %s now holds %s files", report.images_stored,
                report.new_files, report.already_had, report.blocked, report.errors,
                report.elapsed_s, args.raw, sum(report.raw_files.values()))
