"""The scrape stage killed with its crawler running: both end, and no temp folder stays."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from testing.project import REPO


def test_a_killed_scrape_stage_takes_its_crawler_and_temp_folder_along(tmp_path: Path) -> None:
    """`kill -9` of the stage: the crawl subprocess stops too (it is sent SIGTERM, a pause)
    instead of crawling on into data/raw, so does the demo site's server, and the next run
    removes the dead stage's temp folder."""
    import tempfile

    import psutil
    import yaml

    from pipeline.scrape.process import WORK_PREFIX, remove_orphaned_work_dirs
    from testing.project import TINY_SITE, tiny_params

    params = yaml.safe_load(tiny_params(TINY_SITE))
    # 3 s between requests: with the stage (and the demo server in it) gone, an orphaned
    # crawler would go on for minutes through its queue of now failing requests
    params["scrape"]["crawl"]["download_delay_s"] = 3.0
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    stage = subprocess.Popen([sys.executable, "-m", "pipeline", "scrape"], cwd=tmp_path,
                             env={**os.environ, "PYTHONPATH": str(REPO)},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, crawler, site = time.monotonic() + 240, None, None
    while time.monotonic() < deadline and crawler is None:
        time.sleep(0.5)
        assert stage.poll() is None, "the stage ended before its crawl started"
        children = psutil.Process(stage.pid).children()
        crawler = next((c for c in children if "scraper.crawl" in " ".join(c.cmdline())), None)
        site = next((c for c in children if "demo" in c.cmdline()), None)
    assert crawler is not None and site is not None
    time.sleep(2)  # the crawl is under way
    work = list(Path(tempfile.gettempdir()).glob(f"{WORK_PREFIX}{stage.pid}-*"))
    assert work, "the stage's temp folder should exist while it runs"
    stage.send_signal(signal.SIGKILL)
    stage.wait()
    crawler.wait(timeout=30)  # raises psutil.TimeoutExpired if it outlives its stage
    site.wait(timeout=30)  # the demo site's server too: its input, a pipe from the stage, closed
    remove_orphaned_work_dirs()
    assert not any(folder.exists() for folder in work)
