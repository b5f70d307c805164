"""The scrape stage: every enabled source into data/raw; web sources in a Scrapy subprocess.

When ``scrape.demo_site`` is on, the bundled demo site is generated (once per
config) and served on a loopback port for the length of the crawl, by ``python
-m demo`` in a child process; its URLs are written as ``{demo}`` in params and in
the manifest. Folder sources are imported here, without Scrapy.

Pausing: Ctrl-C (or one SIGTERM) lets Scrapy finish what is in flight and keep
its queue in ``scrape.crawl.job_dir``; the stage then exits non-zero, and the
next run resumes from that queue. A crawl that did not stop cleanly leaves no
usable queue, and the next run starts over, skipping every image data/raw has.

The jobs are in their own modules: the crawl's config (:mod:`pipeline.scrape.crawl_config`),
the child processes and their signals (:mod:`pipeline.scrape.process`), the
paused-crawl folder (:mod:`pipeline.scrape.job`) and the report
(:mod:`pipeline.scrape.report`).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline.config.loader import load_sections
from pipeline.config.scrape import DemoSiteParams, ScrapeParams
from pipeline.runtime.entry import main
from pipeline.runtime.files import write_atomic
from pipeline.scrape.crawl_config import web_sources
from pipeline.scrape.folder import FolderImport, import_folder
from pipeline.scrape.job import crawl, paused_demo_port
from pipeline.scrape.process import WORK_PREFIX, demo_site_served, remove_orphaned_work_dirs
from pipeline.scrape.report import ScrapeReport, build_report
from pipeline.scrape.shared import check_shared_redis

logger = logging.getLogger(__name__)


def import_folders(params: ScrapeParams, raw_dir: Path) -> dict[str, FolderImport]:
    """Every enabled folder source into ``raw_dir``."""
    return {name: import_folder(
        name, source.path, list(params.classes), raw_dir, max_images=source.max_images,
        max_bytes=params.crawl.max_bytes, licence=source.licence, attribution=source.attribution,
        progress_every_s=params.crawl.progress_every_s)
        for name, source in params.enabled_sources().items() if source.kind == "folder"}


def crawl_web_sources(params: ScrapeParams, demo: DemoSiteParams, raw_dir: Path, work: Path,
                      site_dir: Path, job_root: Path | None) -> dict[str, Any]:
    """The crawl's stats (none when no web source is on), the demo site served if asked."""
    if not web_sources(params):
        return {}
    check_shared_redis()  # before the demo site is made and served
    if not params.demo_site:
        return crawl(params, raw_dir, work, None, job_root)
    port = paused_demo_port(job_root)
    with demo_site_served(site_dir, demo, port, work) as url:
        if port and not url.endswith(f":{port}") and job_root is not None:
            shutil.rmtree(job_root, ignore_errors=True)  # its port is taken: the queue is stale
        logger.info("demo site serving %s at %s", site_dir, url)
        return crawl(params, raw_dir, work, url, job_root)


def scrape(params: ScrapeParams, demo: DemoSiteParams, raw_dir: Path, report_dir: Path,
           site_dir: Path, job_root: Path | None = None) -> ScrapeReport:
    """Every enabled source into ``raw_dir``; write the crawl's report files."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    report_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    imported = import_folders(params, raw_dir)
    remove_orphaned_work_dirs()
    with tempfile.TemporaryDirectory(prefix=f"{WORK_PREFIX}{os.getpid()}-") as tmp:
        work = Path(tmp)
        stats = crawl_web_sources(params, demo, raw_dir, work, site_dir, job_root)
        errors_file = work / "errors.jsonl"
        errors_text = errors_file.read_text() if errors_file.exists() else ""
    write_atomic(report_dir / "errors.jsonl", errors_text)
    report = build_report(params, stats, imported, raw_dir,
                          elapsed_s=round(time.perf_counter() - started, 2))
    report.write(report_dir)
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--raw", type=Path, default=Path("data/raw"))
    parser.add_argument("--reports", type=Path, default=Path("reports/scrape"))
    parser.add_argument("--site-dir", type=Path, default=Path("data/demo_site"),
                        help="where the demo site is generated (default: %(default)s)")


def run(args: argparse.Namespace) -> None:
    params = load_sections(args.params, scrape=ScrapeParams, demo_site=DemoSiteParams)
    job_dir = params.scrape.crawl.job_dir
    report = scrape(params.scrape, params.demo_site, args.raw, args.reports, args.site_dir,
                    Path(job_dir) if job_dir else None)
    by_source = ", ".join(f"{k} {v}" for k, v in report.stored_by_source.items()) or "none"
    refused = (f", {report.links_refused} links out of an import folder refused"
               if report.links_refused else "")
    logger.info("scrape: %d images stored (%s; %d new files), %d already had, %d blocked, "
                "%d opted out%s, %d errors in %.1f s; %s now holds %s files",
                report.images_stored, by_source, report.new_files, report.already_had,
                report.blocked, report.opted_out, refused, report.errors, report.elapsed_s,
                args.raw, sum(report.raw_files.values()))


if __name__ == "__main__":  # as dvc.yaml runs it: under its own name, for its logger
    sys.exit(main(__spec__.name))
