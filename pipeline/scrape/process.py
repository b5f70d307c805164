"""The scrape stage's child processes: the crawler and the demo site's server.

Both are started by module name (``python -m scraper.crawl``, ``python -m demo``),
so this package imports neither. Neither outlives the stage: the crawler gets
SIGTERM (a pause) when the stage dies, even by ``kill -9``; the demo server stops
when its standard input, a pipe from the stage, closes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.config.scrape import DemoSiteParams
from pipeline.contracts import crawl as crawl_contract
from pipeline.runtime.errors import UserError
from pipeline.runtime.lifeline import parent_death_signal


class CrawlPausedError(UserError):
    """The crawl stopped cleanly before the end; the next run resumes it."""


@contextlib.contextmanager
def signals_to_child() -> Iterator[None]:
    """While the crawl runs, Ctrl-C and SIGTERM are the crawl's to handle (the terminal and
    the Prefect flow signal the whole process group): it pauses, and we wait for it."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_crawl_subprocess(config: dict[str, Any], work: Path) -> dict[str, Any]:
    """Run ``python -m scraper.crawl`` on ``config``; its log goes to our stderr."""
    work.mkdir(parents=True, exist_ok=True)
    config_path = work / "crawl.json"
    config_path.write_text(json.dumps(config, indent=1))
    with signals_to_child():
        result = subprocess.run([sys.executable, "-m", "scraper.crawl", str(config_path)],
                                check=False,
                                # SIGTERM pauses the crawl, as Ctrl-C does; the stage ignores
                                # both while it waits (signals_to_child), the crawl must not
                                preexec_fn=parent_death_signal(
                                    signal.SIGTERM, reset=(signal.SIGINT, signal.SIGTERM)))
    stats_path = Path(config["stats_path"])
    if result.returncode == crawl_contract.PAUSED_EXIT:
        where = f"; its queue is in {config['job_dir']}" if config.get("job_dir") else ""
        raise CrawlPausedError(f"the crawl was paused{where}. Images stored so far are kept in "
                               "data/raw; run the same command again to resume")
    if result.returncode != crawl_contract.FINISHED_EXIT or not stats_path.exists():
        raise UserError(f"the crawl failed (exit code {result.returncode}); its log above "
                        "says why. Data already stored in data/raw is kept; run again to resume")
    return json.loads(stats_path.read_text())


@contextlib.contextmanager
def demo_site_served(site_dir: Path, config: DemoSiteParams, port: int,
                     work: Path) -> Iterator[str]:
    """The demo site, generated in ``site_dir`` if stale and served on 127.0.0.1 (on ``port``
    if it is free, else any) by ``python -m demo serve --for-stage``; yields its base URL."""
    config_path, url_file = work / "demo_site.json", work / "demo_url"
    config_path.write_text(config.model_dump_json())
    command = [sys.executable, "-m", "demo", "serve", str(site_dir), "--port", str(port),
               "--for-stage", str(config_path), "--url-file", str(url_file)]
    server = subprocess.Popen(command, stdin=subprocess.PIPE)
    assert server.stdin is not None
    try:
        while not url_file.exists():
            if server.poll() is not None:
                raise UserError(f"the demo site could not be served from {site_dir} (exit code "
                                f"{server.returncode}); its log above says why")
            time.sleep(0.05)
        yield url_file.read_text().strip()
    except BaseException:
        server.kill()
        raise
    finally:
        server.stdin.close()  # the server's signal to stop
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


WORK_PREFIX = "happysad-scrape-"  # + the stage's pid: a killed stage's folder is found later


def remove_orphaned_work_dirs() -> None:
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
