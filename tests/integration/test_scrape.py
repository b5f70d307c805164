"""The spider and the scrape stage, crawling the demo site over real HTTP on loopback."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from PIL import Image

from demo.server import DemoSiteServer
from pipeline.config.params import Params
from pipeline.contracts.raw import RawRecord, RawStore, read_manifest
from pipeline.scrape.crawl_config import crawl_config
from pipeline.scrape.process import run_crawl_subprocess
from pipeline.stages.scrape import scrape
from testing.project import REPO


def ground_truth(site: Path) -> dict:
    return json.loads((site / "ground_truth.json").read_text())


def expected_stored(site: Path) -> set[tuple[str, str]]:
    """(label, sha256) of every image the demo site can serve to a polite crawler."""
    return {(i["label"], i["sha256"]) for i in ground_truth(site)["images"]
            if i["fetch"] == "stored"}


def crawl(site: Path, params: Params, raw: Path, work: Path) -> tuple[dict, list[str]]:
    """One crawl of ``site`` into ``raw``; returns Scrapy's stats and the paths served."""
    work.mkdir(parents=True, exist_ok=True)
    with DemoSiteServer(site) as server:
        stats = run_crawl_subprocess(crawl_config(params.scrape, raw, work, server.base_url), work)
    return stats, list(server.requests)


def stored_files(raw: Path) -> dict[str, str]:
    return {str(p.relative_to(raw)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(raw.glob("*/*"))}


@pytest.fixture(scope="module")
def first_crawl(tiny_site: Path, fast_params: Params, tmp_path_factory: pytest.TempPathFactory):
    raw = tmp_path_factory.mktemp("crawl") / "raw"
    stats, requests = crawl(tiny_site, fast_params, raw, raw.parent / "work")
    return raw, stats, requests


def test_stores_every_servable_image_once(first_crawl, tiny_site: Path) -> None:
    raw, _, _ = first_crawl
    records = list(read_manifest(raw))
    assert {(r.label, r.sha256) for r in records} == expected_stored(tiny_site)
    assert len({(r.label, r.url) for r in records}) == len(records)
    files = stored_files(raw)
    assert set(files) == {r.path for r in records}  # nothing unrecorded, no partial files
    for path, sha in files.items():
        assert Path(path).stem == sha  # content-addressed, original bytes


def test_never_fetches_disallowed_or_decoy_images(first_crawl, tiny_site: Path) -> None:
    _, stats, requests = first_crawl
    prefix = ground_truth(tiny_site)["disallowed_prefix"]
    assert not [r for r in requests if r.startswith(prefix)]
    assert stats["happysad/blocked"] == 3  # two by robots.txt, one off-site
    assert stats["robotstxt/forbidden"] == 2
    assert stats["happysad/offsite"] == 1
    # Lazy placeholders, srcset's small candidates and thumbnails are not the image.
    assert not [r for r in requests if r.startswith(("/thumbs/", "/static/"))]
    assert "/robots.txt" in requests


def test_manifest_records_every_field(first_crawl, tiny_site: Path) -> None:
    raw, _, _ = first_crawl
    truth = {(i["label"], i["url"]): i for i in ground_truth(tiny_site)["images"]}
    for record in read_manifest(raw):
        planted = truth[(record.label, record.url.removeprefix("{demo}"))]
        data = (raw / record.path).read_bytes()
        assert record.url.startswith("{demo}/")
        page_kind = "/detail/" if planted["render"] == "detail" else "/search/"
        assert record.page_url.startswith("{demo}" + page_kind)
        assert record.bytes == len(data) and record.sha256 == planted["sha256"]
        assert record.source == "demo" and record.query == f"{record.label} person"
        assert record.licence == "CC0-1.0" and record.attribution
        assert record.content_type
        datetime.fromisoformat(record.fetched_at)
        if planted["kind"] in ("face", "cmyk_jpeg", "exif_rotated", "slow", "redirect"):
            with Image.open(raw / record.path) as img:
                assert (record.width, record.height) == img.size
                assert record.format == img.format
        if planted["kind"] == "redirect":
            assert record.final_url == "{demo}" + planted["of"]
        else:
            assert record.final_url == record.url
        if planted["kind"] in ("zero_byte", "html_as_jpeg", "non_image"):
            assert record.path.endswith(".bin") and record.width is None


def test_reports_404_and_500_and_follows_redirect_and_slow(first_crawl, tiny_site: Path) -> None:
    raw, stats, requests = first_crawl
    kinds = {i["kind"]: i for i in ground_truth(tiny_site)["images"]}
    errors = [json.loads(line) for line in (raw.parent / "work" / "errors.jsonl").open()]
    assert {(e["url"], e["error"]) for e in errors} == {
        ("{demo}" + kinds["http_404"]["url"], "http_404"),
        ("{demo}" + kinds["http_500"]["url"], "http_500"),
    }
    assert requests.count(kinds["http_500"]["url"]) == 3  # retried twice, then reported
    stored_urls = {r.url for r in read_manifest(raw)}
    assert "{demo}" + kinds["slow"]["url"] in stored_urls
    assert "{demo}" + kinds["redirect"]["url"] in stored_urls


def test_second_crawl_adds_nothing(first_crawl, tiny_site: Path, fast_params: Params,
                                   tmp_path: Path) -> None:
    raw, _, _ = first_crawl
    manifest = (raw / "manifest.jsonl").read_bytes()
    before = {p: p.stat().st_mtime_ns for p in raw.glob("*/*")}
    stats, requests = crawl(tiny_site, fast_params, raw, tmp_path / "work")
    assert (raw / "manifest.jsonl").read_bytes() == manifest
    assert {p: p.stat().st_mtime_ns for p in raw.glob("*/*")} == before
    assert stats.get("happysad/images_stored", 0) == 0
    # Only the links that failed last time are asked for again; stored images are not.
    failed = {i["url"] for i in ground_truth(tiny_site)["images"] if i["fetch"] == "error"}
    assert {r for r in requests if r.startswith(("/img/", "/go/"))} == failed


def test_killed_crawl_resumes_to_the_same_result(first_crawl, tiny_site: Path,
                                                 fast_params: Params, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    crawl_params = fast_params.scrape.crawl.model_copy(update={
        "concurrent_requests": 2, "concurrent_requests_per_domain": 2, "download_delay_s": 0.05})
    slow = fast_params.model_copy(update={
        "scrape": fast_params.scrape.model_copy(update={"crawl": crawl_params})})
    work = tmp_path / "work"
    work.mkdir()
    with DemoSiteServer(tiny_site) as server:
        config = crawl_config(slow.scrape, raw, work, server.base_url)
        (work / "crawl.json").write_text(json.dumps(config))
        proc = subprocess.Popen([sys.executable, "-m", "scraper.crawl", str(work / "crawl.json")],
                                cwd=REPO, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        manifest = raw / "manifest.jsonl"
        while time.monotonic() < deadline:
            if manifest.exists() and manifest.read_text().count("\n") >= 8:
                break
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    interrupted = len(list(read_manifest(raw)))
    assert 8 <= interrupted < len(expected_stored(tiny_site))
    crawl(tiny_site, fast_params, raw, tmp_path / "work2")
    full_raw = first_crawl[0]
    assert stored_files(raw) == stored_files(full_raw)
    key = lambda r: (r.label, r.url, r.sha256, r.path)  # noqa: E731
    assert sorted(map(key, read_manifest(raw))) == sorted(map(key, read_manifest(full_raw)))


def test_store_repairs_what_a_crash_leaves(tmp_path: Path) -> None:
    store = RawStore(tmp_path)
    path, sniffed, is_new = store.store("happy", b"not an image")
    assert is_new and path.endswith(".bin") and sniffed.width is None
    record = RawRecord(url="u", final_url="u", page_url="p", source="s", query="q",
                       label="happy", sha256=Path(path).stem, path=path, bytes=12,
                       content_type="x", format=None, width=None, height=None, licence=None,
                       attribution=None, fetched_at="2026-01-01T00:00:00+00:00")
    store.append(record)
    with open(store.manifest_path, "a") as fh:
        fh.write('{"url": "half')  # a record cut short by kill -9
    (tmp_path / "happy" / ".partial-abc").write_bytes(b"half an image")
    assert store.store("happy", b"not an image")[2] is False  # never rewritten
    reopened = RawStore(tmp_path)
    assert list(reopened.records()) == [record]
    assert store.manifest_path.read_text().endswith("\n")
    assert not list(tmp_path.glob("happy/.partial-*"))


def test_scrape_stage_generates_serves_and_reports(tmp_path: Path, fast_params: Params) -> None:
    report = scrape(fast_params.scrape, fast_params.demo_site, tmp_path / "raw",
                    tmp_path / "reports", tmp_path / "site")
    stored = expected_stored(tmp_path / "site")
    assert report.images_stored == len(read_manifest_list(tmp_path / "raw"))
    assert {(r.label, r.sha256) for r in read_manifest(tmp_path / "raw")} == stored
    assert report.errors == 2 and report.errors_by_kind == {"http_404": 1, "http_500": 1}
    assert report.blocked == 3 and report.pages["happy"] >= 2
    details = json.loads((tmp_path / "reports" / "report.json").read_text())
    assert details == json.loads(json.dumps(report.details()))
    assert sum(details["raw_records"].values()) == report.images_stored
    assert len((tmp_path / "reports" / "errors.jsonl").read_text().splitlines()) == 2


def read_manifest_list(raw: Path) -> list[RawRecord]:
    return list(read_manifest(raw))


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def test_a_bad_value_in_a_stage_section_stops_its_command_in_one_line(tmp_path: Path) -> None:
    """Through the stage's own entry point, as dvc.yaml runs it: exit 2, one line, the file and
    key named, no traceback; and a stage does not read other stages' sections."""
    params = tmp_path / "params.yaml"
    text = (REPO / "params.yaml").read_text()
    params.write_text(text.replace("max_pages: 100", "max_pages: -1", 1))
    result = subprocess.run([sys.executable, "-m", "pipeline.stages.scrape", "--params", str(params),
                             "--raw", str(tmp_path / "raw")], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"happysad scrape: error: {params}: scrape.sources.demo.gallery.max_pages: Input should be "
        "greater than 0; fix that key"]
    params.write_text(re.sub(r"schedule: \"[^\"]*\"", 'schedule: "61 99 * * 9"', text, count=1))
    split = subprocess.run([sys.executable, "-m", "pipeline.stages.split", "--params", str(params),
                            "--images", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "s")],
                           cwd=tmp_path, capture_output=True, text=True, timeout=120,
                           env={**os.environ, "PYTHONPATH": str(REPO)})
    assert "flow.schedule" not in split.stderr and "none.jsonl" in split.stderr  # its own input


def test_missing_params_file_is_one_line(tmp_path: Path) -> None:
    result = run_cli("scrape", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == ("happysad scrape: error: params.yaml: not found; "
                                     "run from the repository root or pass --params")


