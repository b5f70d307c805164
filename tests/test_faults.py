"""Faults and bad input (issue 18): each probe of the fault survey, and where its test is.

1. `learning_rate: .inf`, NaN losses: test_train (a diverged run ships nothing; evaluate,
   save, promote and predict refuse non-finite numbers).
2. `kill -9` of the scrape stage, of `dvc`, of the flow: test_scrape (the crawler, the demo
   server and the temp folder go with the stage); here (a stage goes with `dvc`).
3. clean and split deleting git-tracked files: test_clean, test_split.
4. bad model files and params files: test_train (model files), test_scrape (params).
5. a page of 100,000 `<img>` tags: here (at most `max_page_elements`; the crawl goes on).
6. a 50 MB body without Content-Length: here (`too_large`, for an image and for a page).
7. a source the address guard refuses outright: test_sources (scrape fails, naming it).
8. class names, cron, time zones, booleans, huge numbers, duplicate keys: test_scrape.
9. training resumed after a kill: test_train (it equals the uninterrupted run).
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import psutil
import yaml

from tests.conftest import TINY_SITE
from tests.project import copy_project, tiny_params, tool_env
from tests.sites import Answer, LoopbackSite, html, image
from tests.test_sources import params_with, run_scrape

BIG = 50 * 2**20  # streamed, against the 10 MiB limit of params_with


def test_a_page_of_100000_images_is_capped_and_the_crawl_goes_on(tmp_path: Path) -> None:
    flood = "".join(f'<img src="/img/{i}.jpg">' for i in range(100_000))
    with LoopbackSite() as site:
        site.routes.update({"/robots.txt": Answer(200, b"", {"Content-Type": "text/plain"}),
                            "/flood.html": html(f"<html><body>{flood}</body></html>"),
                            "/calm.html": html('<img src="/ok.jpg">'), "/ok.jpg": image(3)})
        site.routes.update({f"/img/{i}.jpg": image(i) for i in range(40)})
        source = {"kind": "gallery", "max_pages": 5, "max_images": 100_000,
                  "start_urls": {"happy": [f"{site.url}/flood.html", f"{site.url}/calm.html"]},
                  "image_selector": "img"}
        report, records = run_scrape(params_with({"web": source}, site, tmp_path,
                                                 max_page_elements=40), tmp_path)
        fetched = [p for p in site.paths() if p.startswith("/img/")]
    assert sorted(fetched) == sorted(f"/img/{i}.jpg" for i in range(40))  # the first 40 only
    assert f"{site.url}/ok.jpg" in records and len(records) == 41  # the other page still crawled
    assert report.errors == 0


def test_streamed_bodies_over_the_limit_are_too_large_for_images_and_pages(tmp_path: Path) -> None:
    """No Content-Length and no chunks: the body ends when the connection closes, so only the
    bytes received tell its size."""
    streamed = {"Content-Type": "image/jpeg"}
    with LoopbackSite() as site:
        site.routes.update({
            "/robots.txt": Answer(200, b"", {"Content-Type": "text/plain"}),
            "/g.html": html('<img src="/big.jpg"><img src="/ok.jpg">'), "/ok.jpg": image(1),
            "/big.jpg": Answer(200, b"\xff" * BIG, streamed, close_delimited=True),
            "/big.html": Answer(200, b"<html>" + b" " * BIG, {"Content-Type": "text/html"},
                                close_delimited=True)})
        source = {"kind": "gallery", "max_pages": 5, "max_images": 10, "image_selector": "img",
                  "start_urls": {"happy": [f"{site.url}/g.html", f"{site.url}/big.html"]}}
        report, records = run_scrape(params_with({"web": source}, site, tmp_path), tmp_path)
    errors = [json.loads(line) for line in (tmp_path / "reports" / "errors.jsonl").open()]
    assert sorted((e["url"].removeprefix(site.url), e["error"]) for e in errors) == [
        ("/big.html", "too_large"), ("/big.jpg", "too_large")]
    assert report.errors_by_kind == {"too_large": 2} and list(records) == [f"{site.url}/ok.jpg"]


def test_killing_dvc_takes_its_stage_along(tmp_path: Path) -> None:
    """`kill -9` of `dvc repro`: the stage it ran ends too (and so the stage's crawler), though
    DVC ran it through `$SHELL -c` and /bin/sh (dash) stays in between."""
    params = yaml.safe_load(tiny_params(TINY_SITE))
    params["scrape"]["crawl"]["download_delay_s"] = 3.0  # a crawl of minutes, were it left alone
    project = copy_project(tmp_path / "project", yaml.safe_dump(params))
    dvc = subprocess.Popen(["dvc", "repro", "scrape"], cwd=project,
                           env={**tool_env(), "SHELL": "/bin/sh"},
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, stage, crawler = time.monotonic() + 300, None, None
    while time.monotonic() < deadline and crawler is None:
        time.sleep(0.5)
        assert dvc.poll() is None, "dvc ended before its stage's crawl started"
        family = psutil.Process(dvc.pid).children(recursive=True)
        stage = next((p for p in family if p.cmdline()[-3:] == ["-m", "pipeline", "scrape"]),
                     None)
        crawler = next((p for p in family if "scraper.crawl" in " ".join(p.cmdline())), None)
    assert stage is not None and crawler is not None
    dvc.send_signal(signal.SIGKILL)
    dvc.wait()
    stage.wait(timeout=60)  # raises psutil.TimeoutExpired if the stage outlives DVC
    crawler.wait(timeout=60)
