"""The paused-crawl folder (``scrape.crawl.job_dir``): Scrapy's queue, kept only after a
clean pause, so the next run resumes it; anything else there is cleared."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from pipeline.config.scrape import DEMO_PLACEHOLDER, ScrapeParams
from pipeline.scrape.crawl_config import crawl_config
from pipeline.scrape.process import CrawlPausedError, run_crawl_subprocess
from pipeline.scrape.shared import run_shared_crawl, shared_redis_url

logger = logging.getLogger(__name__)

QUEUE_FORMAT = 3  # the requests' callbacks and arguments; a queue of another format is cleared


class JobFolder:
    """Scrapy's JOBDIR for one crawl config, usable only after a clean pause."""

    def __init__(self, root: Path, config: dict[str, Any]) -> None:
        stable = {k: config[k] for k in ("classes", "sources")}
        stable["sources"] = json.loads(json.dumps(stable["sources"]).replace(
            next(iter(config["url_aliases"]), "\0"), DEMO_PLACEHOLDER))
        stable["queue_format"] = QUEUE_FORMAT
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


def paused_demo_port(job_root: Path | None) -> int:
    """The port a paused crawl's queue names, so its {demo} URLs still answer; else 0 (any)."""
    if job_root is None:
        return 0
    try:
        return int(json.loads((job_root / "paused.json").read_text()).get("demo_port") or 0)
    except (OSError, ValueError):
        return 0


def crawl(params: ScrapeParams, raw_dir: Path, work: Path, demo_url: str | None,
          job_root: Path | None) -> dict[str, Any]:
    """One crawl of the web sources, resuming a paused one in ``job_root``; its stats."""
    config = crawl_config(params, raw_dir, work, demo_url)
    shared = shared_redis_url()
    if shared is not None:  # the queue is in Redis, not in a job folder
        return run_shared_crawl(config, work, shared, params.crawl.shared_workers)
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
