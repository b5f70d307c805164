"""The scrape stage: every enabled source into data/raw; web sources in a Scrapy subprocess.

When ``scrape.demo_site`` is on, the bundled demo site is generated (once per
config) and served on a loopback port for the length of the crawl; its URLs
are written as ``{demo}`` in params and in the manifest. Folder sources are
imported here, without Scrapy.

Pausing: Ctrl-C (or one SIGTERM) lets Scrapy finish what is in flight and keep
its queue in ``scrape.crawl.job_dir``; the stage then exits non-zero, and the
next run resumes from that queue. A crawl that did not stop cleanly leaves no
usable queue, and the next run starts over, skipping every image data/raw has.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import UserError
from pipeline.params import DEMO_PLACEHOLDER, DemoSiteParams, ScrapeParams, load_params
from pipeline.raw import read_manifest
from scraper.demo.server import DemoSiteServer
from scraper.demo.site import DemoSiteConfig, ensure_site

logger = logging.getLogger(__name__)

PAUSED_EXIT = 3  # scraper.crawl's exit status for a paused crawl


class CrawlPausedError(UserError):
    """The crawl stopped cleanly before the end; the next run resumes it."""


@dataclass(frozen=True)
class ScrapeReport:
    """What one crawl did, and what data/raw holds after it."""

    pages: dict[str, int]
    images_stored: int
    new_files: int
    already_had: int
    blocked: int
    opted_out: int
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
                "opted_out": self.opted_out, "errors": self.errors,
                "errors_by_kind": self.errors_by_kind}


def web_sources(params: ScrapeParams) -> dict[str, Any]:
    return {name: source for name, source in params.enabled_sources().items()
            if source.kind != "folder"}


def crawl_config(params: ScrapeParams, raw_dir: Path, work: Path,
                 demo_url: str | None) -> dict[str, Any]:
    """The subprocess's config: enabled web sources with ``{demo}`` resolved."""
    sources = {}
    for name, source in web_sources(params).items():
        data = source.model_dump()
        if demo_url is not None and source.kind == "gallery":
            data["start_urls"] = {label: [u.replace(DEMO_PLACEHOLDER, demo_url) for u in urls]
                                  for label, urls in data["start_urls"].items()}
            if data["search_url"]:
                data["search_url"] = data["search_url"].replace(DEMO_PLACEHOLDER, demo_url)
        sources[name] = data
    crawl = params.crawl.model_dump()
    if demo_url is not None:
        crawl["allow_private_hosts"] = [*crawl["allow_private_hosts"],
                                        demo_url.removeprefix("http://")]
    return {
        "classes": {label: cls.model_dump() for label, cls in params.classes.items()},
        "sources": sources,
        "crawl": crawl,
        "raw_dir": str(raw_dir.resolve()),
        "errors_path": str(work / "errors.jsonl"),
        "stats_path": str(work / "stats.json"),
        "url_aliases": {demo_url: DEMO_PLACEHOLDER} if demo_url else {},
        # Scrapy's start-up banner (versions, settings, middlewares) only with --verbose
        "banner": logging.getLogger().isEnabledFor(logging.DEBUG),
    }


@contextlib.contextmanager
def _signals_to_child() -> Iterator[None]:
    """While the crawl runs, Ctrl-C and SIGTERM are the crawl's to handle (the terminal and
    the Prefect flow signal the whole process group): it pauses, and we wait for it."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _die_with_parent() -> Callable[[], None] | None:
    """What the crawl's process runs before the crawl: Linux then sends it SIGTERM (a pause,
    as Ctrl-C is) when the stage's process dies, even by ``kill -9``, so no crawler outlives
    its stage. Resolved here, before the fork: the child only calls it (no import, no lock)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl, pr_set_pdeathsig, parent = ctypes.CDLL(None).prctl, 1, os.getpid()

    def in_child() -> None:
        # The stage ignores SIGINT and SIGTERM while the crawl runs (_signals_to_child); the
        # crawl must not inherit that, or a signal before Scrapy's own handlers would be lost.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        prctl(pr_set_pdeathsig, int(signal.SIGTERM))
        if os.getppid() != parent:  # the stage died before the line above: stop at once
            os.kill(os.getpid(), signal.SIGTERM)

    return in_child


def run_crawl_subprocess(config: dict[str, Any], work: Path) -> dict[str, Any]:
    """Run ``python -m scraper.crawl`` on ``config``; its log goes to our stderr."""
    work.mkdir(parents=True, exist_ok=True)
    config_path = work / "crawl.json"
    config_path.write_text(json.dumps(config, indent=1))
    with _signals_to_child():
        result = subprocess.run([sys.executable, "-m", "scraper.crawl", str(config_path)],
                                check=False, preexec_fn=_die_with_parent())
    stats_path = Path(config["stats_path"])
    if result.returncode == PAUSED_EXIT:
        where = f"; its queue is in {config['job_dir']}" if config.get("job_dir") else ""
        raise CrawlPausedError(f"the crawl was paused{where}. Images stored so far are kept in "
                        "data/raw; run the same command again to resume")
    if result.returncode != 0 or not stats_path.exists():
        raise UserError(f"the crawl failed (exit code {result.returncode}); its log above "
                        "says why. Data already stored in data/raw is kept; run again to resume")
    return json.loads(stats_path.read_text())


def _refuse_silent_sources(params: ScrapeParams, stats: dict[str, Any],
                           by_source: dict[str, int]) -> None:
    """A web source that the address guard refused outright gave no page and no image: say so
    now, not later in clean as "no usable image"."""
    refused = int(stats.get("happysad/refused_address", 0))
    if not refused:
        return
    silent = [name for name in web_sources(params)
              if not int(stats.get(f"happysad/pages_by_source/{name}", 0)) and not by_source.get(name)]
    if silent:
        raise UserError(f"source {', '.join(silent)} gave no page and no image: the address guard "
                        f"refused {refused} request(s) (a loopback or private host, or not "
                        "http(s)); if the host is yours, add its host:port to "
                        "scrape.crawl.allow_private_hosts, else fix the source's URLs")


WORK_PREFIX = "happysad-scrape-"  # + the stage's pid: a killed stage's folder is found later


def _remove_orphaned_work_dirs() -> None:
    """Delete the temporary folders of scrape stages that were killed (``kill -9`` leaves no
    time to clean up): those whose process is gone."""
    for folder in Path(tempfile.gettempdir()).glob(f"{WORK_PREFIX}*-*"):
        pid = folder.name.removeprefix(WORK_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class JobFolder:
    """Scrapy's JOBDIR for one crawl config, usable only after a clean pause."""

    def __init__(self, root: Path, config: dict[str, Any]) -> None:
        stable = {k: config[k] for k in ("classes", "sources")}
        stable["sources"] = json.loads(json.dumps(stable["sources"]).replace(
            next(iter(config["url_aliases"]), "\0"), DEMO_PLACEHOLDER))
        self.key = hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()[:16]
        self.root = root
        self.path = root / "scrapy"
        self.state_file = root / "paused.json"

    def resumable(self) -> dict[str, Any] | None:
        """The saved state of a cleanly paused crawl of this config; otherwise the folder is
        cleared (a crash leaves a queue that does not match what was stored)."""
        if not self.root.exists():
            return None
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            state = None
        if state and state.get("key") == self.key:
            return state
        logger.info("%s holds no cleanly paused crawl of these sources; starting over "
                    "(images data/raw already has are skipped)", self.root)
        self.clear()
        return None

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def paused(self, demo_port: int | None) -> None:
        self.state_file.write_text(json.dumps({"key": self.key, "demo_port": demo_port}))

    def running(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.state_file.unlink(missing_ok=True)


def _crawl(params: ScrapeParams, raw_dir: Path, work: Path, demo_url: str | None,
           job_root: Path | None) -> dict[str, Any]:
    config = crawl_config(params, raw_dir, work, demo_url)
    if job_root is None:
        return run_crawl_subprocess(config, work)
    job = JobFolder(job_root, config)
    job.resumable()
    job.running()
    config["job_dir"] = str(job.path.resolve())
    config["errors_path"] = str((job.root / "errors.jsonl").resolve())  # kept across a pause
    port = int(demo_url.rsplit(":", 1)[1]) if demo_url else None
    try:
        stats = run_crawl_subprocess(config, work)
    except CrawlPausedError:
        job.paused(port)
        raise
    errors = job.root / "errors.jsonl"
    if errors.exists():
        shutil.copyfile(errors, work / "errors.jsonl")
    job.clear()
    return stats


def _raw_summary(raw_dir: Path) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    records = list(read_manifest(raw_dir))
    by_label = Counter(r.label for r in records)
    by_source = Counter(r.source for r in records)
    files = {d.name: sum(1 for f in d.iterdir() if not f.name.startswith("."))
             for d in sorted(raw_dir.iterdir()) if d.is_dir()}
    return dict(sorted(by_label.items())), dict(sorted(by_source.items())), files


def _demo_port(job_root: Path | None) -> int:
    """The port a paused crawl's queue names, so its {demo} URLs still answer; else any."""
    if job_root is None:
        return 0
    try:
        return int(json.loads((job_root / "paused.json").read_text()).get("demo_port") or 0)
    except (OSError, ValueError):
        return 0


def scrape(params: ScrapeParams, demo: DemoSiteParams, raw_dir: Path, report_dir: Path,
           site_dir: Path, job_root: Path | None = None) -> ScrapeReport:
    """Every enabled source into ``raw_dir``; write the crawl's report files."""
    from scraper.folder import import_folder

    raw_dir.mkdir(parents=True, exist_ok=True)
    report_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    folders = {n: s for n, s in params.enabled_sources().items() if s.kind == "folder"}
    imported = {name: import_folder(
        name, source.path, list(params.classes), raw_dir, max_images=source.max_images,
        max_bytes=params.crawl.max_bytes, licence=source.licence, attribution=source.attribution,
        progress_every_s=params.crawl.progress_every_s) for name, source in folders.items()}
    stats: dict[str, Any] = {}
    _remove_orphaned_work_dirs()
    with tempfile.TemporaryDirectory(prefix=f"{WORK_PREFIX}{os.getpid()}-") as tmp:
        work = Path(tmp)
        if web_sources(params):
            if params.demo_site:
                ensure_site(site_dir, DemoSiteConfig(**demo.model_dump()))
                port = _demo_port(job_root)
                try:
                    server = DemoSiteServer(site_dir, port=port)
                except OSError:  # that port is taken now: the paused queue cannot be used
                    if job_root is not None:
                        shutil.rmtree(job_root, ignore_errors=True)
                    server = DemoSiteServer(site_dir)
                with server:
                    logger.info("demo site serving %s at %s", site_dir, server.base_url)
                    stats = _crawl(params, raw_dir, work, server.base_url, job_root)
            else:
                stats = _crawl(params, raw_dir, work, None, job_root)
        errors_file = work / "errors.jsonl"
        errors_text = errors_file.read_text() if errors_file.exists() else ""
    (report_dir / "errors.jsonl").write_text(errors_text)
    records, by_source, files = _raw_summary(raw_dir)
    _refuse_silent_sources(params, stats, by_source)
    stored_by_source = {k.rsplit("/", 1)[1]: int(v) for k, v in sorted(stats.items())
                        if k.startswith("happysad/images_stored_by_source/")}
    stored_by_source.update({name: r.stored for name, r in imported.items()})
    errors_by_kind = Counter({k.rsplit("/", 1)[1]: int(v) for k, v in stats.items()
                              if k.startswith("happysad/errors/")})
    errors_by_kind["too_large"] += sum(r.too_large for r in imported.values())
    report = ScrapeReport(
        pages={label: int(stats.get(f"happysad/pages/{label}", 0)) for label in params.classes},
        images_stored=int(stats.get("happysad/images_stored", 0))
        + sum(r.stored for r in imported.values()),
        new_files=int(stats.get("happysad/files_new", 0))
        + sum(r.new_files for r in imported.values()),
        already_had=int(stats.get("happysad/images_known", 0))
        + sum(r.already_had for r in imported.values()),
        blocked=int(stats.get("happysad/blocked", 0)),
        opted_out=int(stats.get("happysad/opted_out", 0))
        + int(stats.get("happysad/opted_out_pages", 0)),
        errors=sum(errors_by_kind.values()),  # each crawl error is counted under its kind too
        errors_by_kind={k: v for k, v in sorted(errors_by_kind.items()) if v},
        stored_by_source=stored_by_source,
        raw_records=records,
        raw_records_by_source=by_source,
        raw_files=files,
        elapsed_s=round(time.perf_counter() - started, 2),
    )
    (report_dir / "report.json").write_text(json.dumps(report.details(), indent=2) + "\n")
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--raw", type=Path, default=Path("data/raw"))
    parser.add_argument("--reports", type=Path, default=Path("reports/scrape"))
    parser.add_argument("--site-dir", type=Path, default=Path("data/demo_site"),
                        help="where the demo site is generated (default: %(default)s)")


def run(args: argparse.Namespace) -> None:
    params = load_params(args.params)
    job_dir = params.scrape.crawl.job_dir
    report = scrape(params.scrape, params.demo_site, args.raw, args.reports, args.site_dir,
                    Path(job_dir) if job_dir else None)
    by_source = ", ".join(f"{k} {v}" for k, v in report.stored_by_source.items()) or "none"
    logger.info("scrape: %d images stored (%s; %d new files), %d already had, %d blocked, "
                "%d opted out, %d errors in %.1f s; %s now holds %s files",
                report.images_stored, by_source, report.new_files, report.already_had,
                report.blocked, report.opted_out, report.errors, report.elapsed_s, args.raw,
                sum(report.raw_files.values()))
