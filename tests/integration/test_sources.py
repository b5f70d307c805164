"""Every web source against a loopback stand-in of its site or API, over real HTTP.

The gallery page carries every markup variant the issue names; the Openverse and
MediaWiki stand-ins answer in those APIs' documented shapes (paging fields,
licence fields, continuation). Politeness and safety are checked on the way:
robots.txt, AI opt-outs, the address guard after a redirect, the size limit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from pipeline.contracts.raw import read_manifest
from pipeline.runtime.errors import UserError
from testing.project import REPO
from testing.sites import Answer, LoopbackSite, as_json, html, image, jpeg, params_with, run_scrape

ROBOTS = "User-agent: *\nDisallow: /private/\nDisallow: /v1/\nDisallow: /w/\n"
HUGE = 11 * 1024 * 1024  # over the 10 MiB limit these tests set


# -- the gallery source ---------------------------------------------------------------

def gallery_routes(site: LoopbackSite, elsewhere: LoopbackSite) -> dict[str, Any]:
    page1 = f"""<html><head><base href="/media/"><title>happy</title></head><body>
    <div class="r"><img class="pic" src="a-src.jpg"></div>
    <div class="r"><img class="pic" data-src="/img/lazy.jpg" src="data:image/gif;base64,R0lGOD"></div>
    <div class="r"><img class="pic" srcset="/img/small.jpg 200w, /img/large.jpg 800w"
                        src="/img/small.jpg"></div>
    <div class="r"><picture class="pic"><source srcset="/img/pic-480.webp 480w, /img/pic-1200.jpg 1200w">
        <img src="/img/pic-fallback.jpg"></picture></div>
    <div class="r"><div class="pic" style="width: 9px; background-image: url('/img/bg.jpg')"></div></div>
    <div class="r"><a class="detail" href="/detail/1.html">more</a></div>
    <div class="r"><img class="pic" src="/private/secret.jpg"></div>
    <div class="r"><img class="pic" src="/img/noai.jpg"></div>
    <div class="r"><img class="pic" src="/img/otherbot.jpg"></div>
    <div class="r"><img class="pic" src="/img/tdm.jpg"></div>
    <div class="r"><img class="pic" src="/go/private"></div>
    <div class="r"><img class="pic" src="http://localhost:{site.host_port.split(':')[1]}/img/by-name.jpg"></div>
    <div class="r"><img class="pic" src="ftp://127.0.0.1/img/ftp.jpg"></div>
    <div class="r"><img class="pic" src="/img/huge.jpg"></div>
    <div class="r"><img class="pic" src="/img/huge-chunked.jpg"></div>
    <nav><a rel="next" href="/gallery/happy/2.html">next</a></nav></body></html>"""
    page2 = """<html><head><meta name="robots" content="index, noimageai"></head><body>
    <div class="r"><img class="pic" src="/img/p2.jpg"></div></body></html>"""

    def find(query: dict[str, list[str]], headers: Any) -> Answer:
        if query.get("q") == ["sad person"]:
            return html('<div class="r"><img class="pic" src="/img/sad-1.jpg"></div>'
                        '<div class="r"><img class="pic" src="/img/sad-2.jpg"></div>')
        return html("<p>nothing found</p>")

    routes: dict[str, Any] = {
        "/robots.txt": Answer(200, ROBOTS.encode(), {"Content-Type": "text/plain"}),
        "/gallery/happy/1.html": html(page1),
        "/gallery/happy/2.html": html(page2),
        "/detail/1.html": html('<main><img class="full" src="/img/full.jpg"></main>'),
        "/find": find,
        "/img/noai.jpg": image(7, **{"X-Robots-Tag": "noindex, noai"}),
        "/img/otherbot.jpg": image(8, **{"X-Robots-Tag": "otherbot: noai, noimageai"}),
        "/img/tdm.jpg": image(9, **{"tdm-reservation": "1"}),
        "/go/private": Answer(302, b"", {"Location": f"{elsewhere.url}/x.jpg"}),
        "/img/huge.jpg": Answer(200, b"\xff" * HUGE, {"Content-Type": "image/jpeg"}),
        "/img/huge-chunked.jpg": Answer(200, b"\xff" * HUGE, {"Content-Type": "image/jpeg"},
                                        chunked=True),
    }
    for seed, name in enumerate(["/media/a-src.jpg", "/img/lazy.jpg", "/img/small.jpg",
                                 "/img/large.jpg", "/img/pic-480.webp", "/img/pic-1200.jpg",
                                 "/img/pic-fallback.jpg", "/img/bg.jpg", "/img/full.jpg",
                                 "/private/secret.jpg", "/img/p2.jpg", "/img/sad-1.jpg",
                                 "/img/sad-2.jpg", "/img/by-name.jpg"], start=20):
        routes[name] = image(seed)
    return routes


GALLERY_STORED = {"happy": ["/media/a-src.jpg", "/img/lazy.jpg", "/img/large.jpg",
                            "/img/pic-1200.jpg", "/img/bg.jpg", "/img/full.jpg",
                            "/img/otherbot.jpg"],
                  "sad": ["/img/sad-1.jpg", "/img/sad-2.jpg"]}


@pytest.fixture(scope="module")
def gallery_crawl(tmp_path_factory: pytest.TempPathFactory):
    tmp_path = tmp_path_factory.mktemp("gallery")
    with LoopbackSite() as elsewhere, LoopbackSite() as site:
        site.routes.update(gallery_routes(site, elsewhere))
        source = {"kind": "gallery", "start_urls": {"happy": [f"{site.url}/gallery/happy/1.html"]},
                  "search_url": f"{site.url}/find?q={{query}}", "image_selector": ".r .pic",
                  "detail_selector": "a.detail", "detail_image_selector": "main img.full",
                  "next_page_selector": "nav a[rel=next]", "max_pages": 5, "max_images": 100,
                  "licence": "CC-BY-4.0", "attribution": "stand-in gallery",
                  "allowed_domains": ["localhost"]}
        params = params_with({"web": source}, site, tmp_path)
        report, records = run_scrape(params, tmp_path)
        yield site, elsewhere, report, records, tmp_path


def test_gallery_finds_every_markup_variant(gallery_crawl) -> None:
    site, _, report, records, _ = gallery_crawl
    stored = {(r.label, r.url.removeprefix(site.url)) for r in records.values()}
    assert stored == {(label, path) for label, paths in GALLERY_STORED.items() for path in paths}
    for record in records.values():
        assert record.source == "web" and record.licence == "CC-BY-4.0"
        assert record.sha256 == __import__("hashlib").sha256(
            (gallery_crawl[4] / "raw" / record.path).read_bytes()).hexdigest()
    assert records[f"{site.url}/img/sad-1.jpg"].query == "sad person"  # from the search template
    assert records[f"{site.url}/img/full.jpg"].page_url == f"{site.url}/detail/1.html"
    # srcset's smaller candidates, a <picture>'s fallback and lazy placeholders are not fetched
    fetched = site.paths()
    for path in ("/img/small.jpg", "/img/pic-480.webp", "/img/pic-fallback.jpg"):
        assert path not in fetched
    assert report.raw_records_by_source == {"web": 9}


def test_gallery_obeys_robots_and_opt_outs(gallery_crawl) -> None:
    site, _, report, records, _ = gallery_crawl
    fetched = site.paths()
    assert "/robots.txt" in fetched and "/private/secret.jpg" not in fetched
    # A page that opts out gives no images; images that opt out are fetched but not kept.
    assert "/img/p2.jpg" not in fetched and "/gallery/happy/2.html" in fetched
    for path in ("/img/noai.jpg", "/img/tdm.jpg"):
        assert path in fetched and f"{site.url}{path}" not in records
    assert f"{site.url}/img/otherbot.jpg" in records  # "otherbot: noai" is not addressed to us
    assert report.opted_out == 3  # two images and one page


def test_gallery_refuses_private_addresses_and_other_schemes(gallery_crawl) -> None:
    site, elsewhere, report, records, tmp_path = gallery_crawl
    assert "/go/private" in site.paths()  # the redirect was followed only as far as the guard
    assert elsewhere.paths() == []        # ... which refused its target on another loopback port
    assert "/img/by-name.jpg" not in site.paths()  # localhost resolves to loopback: refused
    stats = json.loads((tmp_path / "reports" / "report.json").read_text())
    assert stats["blocked"] == report.blocked == 4  # robots.txt, redirect, localhost, ftp


def test_gallery_aborts_bodies_over_the_size_limit(gallery_crawl) -> None:
    site, _, report, records, tmp_path = gallery_crawl
    errors = [json.loads(line) for line in (tmp_path / "reports" / "errors.jsonl").open()]
    assert sorted((e["url"].removeprefix(site.url), e["error"]) for e in errors) == [
        ("/img/huge-chunked.jpg", "too_large"), ("/img/huge.jpg", "too_large")]
    assert report.errors_by_kind == {"too_large": 2}
    assert not [p for p in (tmp_path / "raw").glob("*/*") if p.stat().st_size > 10 * 2**20]


def test_requests_name_the_project_and_its_contact(gallery_crawl) -> None:
    site, *_ = gallery_crawl
    for entry in site.log:
        assert entry.headers["User-Agent"].startswith("happysad/")
        assert "crawler-owner@example.org" in entry.headers["User-Agent"]
        assert entry.headers["From"] == "crawler-owner@example.org"


# -- Openverse ------------------------------------------------------------------------

def openverse_routes(site: LoopbackSite) -> dict[str, Any]:
    def search(query: dict[str, list[str]], headers: Any) -> Answer:
        q, page = query["q"][0], int(query["page"][0])
        slug = q.replace(" ", "-")
        results = [{
            "id": f"{slug}-{page}-{i}", "title": f"{q} {i}",
            "url": f"{site.url}/ov/{slug}-{page}-{i}.jpg",
            "foreign_landing_url": f"https://www.flickr.example/photos/{slug}-{page}-{i}",
            "creator": f"Photographer {i}", "creator_url": "https://www.flickr.example/u",
            "license": "by-sa", "license_version": "4.0",
            "license_url": "https://creativecommons.org/licenses/by-sa/4.0/",
            "provider": "flickr", "source": "flickr", "category": "photograph",
            "filesize": None, "filetype": "jpg", "tags": [], "mature": False,
            "attribution": f'"{q} {i}" by Photographer {i} is licensed under CC BY-SA 4.0.',
            "height": 96, "width": 96, "thumbnail": f"{site.url}/v1/images/x/thumb/",
            "detail_url": f"{site.url}/v1/images/x/", "related_url": f"{site.url}/v1/images/x/related/",
            "fields_matched": ["title"]} for i in range(3)]
        if page == 1:
            results[2]["url"] = f"{site.url}/private/ov-{slug}.jpg"  # robots.txt still applies
        return as_json({"result_count": 6, "page_count": 2, "page_size": 3, "page": page,
                        "results": results})

    routes: dict[str, Any] = {"/robots.txt": Answer(200, ROBOTS.encode()), "/v1/images/": search}
    for n, q in enumerate(["happy-person", "sad-person"]):
        for page in (1, 2):
            for i in range(3):
                routes[f"/ov/{q}-{page}-{i}.jpg"] = image(100 + n * 10 + page * 3 + i)
    return routes


def test_openverse_pages_and_keeps_licences(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HAPPYSAD_TEST_OPENVERSE_TOKEN", "tok-123")
    with LoopbackSite() as site:
        site.routes.update(openverse_routes(site))
        source = {"kind": "openverse", "api_url": f"{site.url}/v1/images/",
                  "licences": ["by", "by-sa"], "licence_types": ["commercial"], "page_size": 3,
                  "max_pages": 5, "max_images": 100, "token_env": "HAPPYSAD_TEST_OPENVERSE_TOKEN"}
        params = params_with({"openverse": source}, site, tmp_path)
        report, records = run_scrape(params, tmp_path)
    api_calls = [e for e in site.log if e.path == "/v1/images/"]
    assert sorted((e.query["q"][0], e.query["page"][0]) for e in api_calls) == [
        ("happy person", "1"), ("happy person", "2"), ("sad person", "1"), ("sad person", "2")]
    for call in api_calls:  # filters from params; the token from the environment
        assert call.query["license"] == ["by,by-sa"] and call.query["license_type"] == ["commercial"]
        assert call.query["page_size"] == ["3"]
        assert call.headers["Authorization"] == "Bearer tok-123"
    assert not [e for e in site.log if e.path != "/v1/images/" and "Authorization" in e.headers]
    # The API is called despite robots.txt's /v1/; the images it names obey robots.txt.
    assert not [p for p in site.paths() if p.startswith("/private/")]
    assert len(records) == 10 and report.blocked == 2
    for record in records.values():
        assert record.source == "openverse"
        assert record.licence == "CC BY-SA 4.0"
        assert record.licence_url == "https://creativecommons.org/licenses/by-sa/4.0/"
        assert record.creator.startswith("Photographer ")
        assert record.page_url.startswith("https://www.flickr.example/photos/")
        assert "licensed under CC BY-SA 4.0" in record.attribution
    assert {r.label for r in records.values()} == {"happy", "sad"}


def test_openverse_without_token_is_anonymous(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("OPENVERSE_TOKEN", raising=False)
    with LoopbackSite() as site:
        site.routes.update(openverse_routes(site))
        source = {"kind": "openverse", "api_url": f"{site.url}/v1/images/", "page_size": 3,
                  "max_pages": 1, "max_images": 1, "token_env": "OPENVERSE_TOKEN"}
        params = params_with({"openverse": source}, site, tmp_path)
        _, records = run_scrape(params, tmp_path)
    assert not [e for e in site.log if "Authorization" in e.headers]
    assert len(records) == 2  # max_images per class


def test_openverse_token_goes_to_the_api_host_only_and_survives_a_retry(tmp_path: Path,
                                                                          monkeypatch) -> None:
    monkeypatch.setenv("HAPPYSAD_TEST_OPENVERSE_TOKEN", "tok-456")
    with LoopbackSite() as site, LoopbackSite() as mirror:
        routes = openverse_routes(site)
        search, calls = routes["/v1/images/"], Counter[str]()

        def flaky(query: dict[str, list[str]], headers: Any) -> Answer:
            q = query["q"][0]
            calls[q] += 1
            if q == "happy person" and calls[q] == 1:
                return Answer(503, b"busy", {"Retry-After": "0"})  # retried by Scrapy
            if q == "sad person":  # the API moved: the token must not follow to another host
                return Answer(302, b"", {"Location": f"{mirror.url}/v1/images/?q=sad+person&page=1"})
            return search(query, headers)

        routes["/v1/images/"] = flaky
        site.routes.update(routes)
        mirror.routes["/v1/images/"] = search
        source = {"kind": "openverse", "api_url": f"{site.url}/v1/images/", "page_size": 3,
                  "max_pages": 1, "max_images": 100, "token_env": "HAPPYSAD_TEST_OPENVERSE_TOKEN"}
        params = params_with({"openverse": source}, site, tmp_path,
                             allow_private_hosts=[site.host_port, mirror.host_port])
        _, records = run_scrape(params, tmp_path)
    happy = [e for e in site.log if e.path == "/v1/images/" and e.query["q"] == ["happy person"]]
    assert len(happy) == 2  # the 503, then its retry: both carry the token
    assert all(e.headers.get("Authorization") == "Bearer tok-456" for e in happy)
    assert [e.path for e in mirror.log] == ["/v1/images/"]
    assert "Authorization" not in mirror.log[0].headers
    assert {r.label for r in records.values()} == {"happy", "sad"}


def test_a_retried_api_request_is_queued_without_its_token(monkeypatch) -> None:
    """What the retry middleware hands back to the scheduler (and, with JOBDIR, to disk)
    carries no token, with the downloader middlewares in the crawl's own order."""
    from scrapy import Request, Spider
    from scrapy.core.downloader.middleware import DownloaderMiddlewareManager
    from scrapy.downloadermiddlewares.retry import RetryMiddleware
    from scrapy.http import Response
    from scrapy.utils.test import get_crawler

    from scraper import settings as project_settings
    from scraper.policy import AUTH_ENV_META, AUTH_HOST_META, ApiToken

    monkeypatch.setenv("HAPPYSAD_TEST_TOKEN", "tok-789")
    crawler = get_crawler(Spider, {k: getattr(project_settings, k) for k in dir(project_settings)
                                   if k.isupper()})
    crawler.spider = Spider.from_crawler(crawler, "probe")
    chain = DownloaderMiddlewareManager.from_crawler(crawler).middlewares
    request = Request("http://api.example/v1/images/?q=x", meta={
        AUTH_ENV_META: "HAPPYSAD_TEST_TOKEN", AUTH_HOST_META: "api.example"})
    next(m for m in chain if isinstance(m, ApiToken)).process_request(request)  # on the way out
    assert request.headers[b"Authorization"] == b"Bearer tok-789"
    answer: Request | Response = Response(request.url, status=503, request=request)
    for middleware in reversed(chain):  # on the way back, as Scrapy calls them
        if isinstance(answer, Request):
            break
        if isinstance(middleware, ApiToken | RetryMiddleware):
            answer = middleware.process_response(request, answer)
    assert isinstance(answer, Request), "a 503 is retried"
    assert b"Authorization" not in answer.headers
    assert answer.meta[AUTH_ENV_META] == "HAPPYSAD_TEST_TOKEN"  # the name, never the token


# -- Wikimedia Commons ----------------------------------------------------------------

def wikimedia_routes(site: LoopbackSite) -> dict[str, Any]:
    def page(n: int, mime: str = "image/jpeg") -> dict[str, Any]:
        return {"pageid": 1000 + n, "ns": 6, "title": f"File:Face {n}.jpg", "index": n,
                "imagerepository": "local", "imageinfo": [{
                    "url": f"{site.url}/wm/orig/{n}.jpg", "thumburl": f"{site.url}/wm/thumb/{n}.jpg",
                    "thumbwidth": 96, "thumbheight": 96, "size": 12345678, "width": 4000,
                    "height": 3000, "mime": mime,
                    "descriptionurl": f"https://commons.wikimedia.example/wiki/File:Face_{n}.jpg",
                    "extmetadata": {
                        "Artist": {"value": f'<a href="//commons.wikimedia.org/wiki/User:J{n}">'
                                            f'Jane &amp; Co {n}</a>', "source": "commons-desc-page"},
                        "LicenseShortName": {"value": "CC BY 4.0", "source": "commons-desc-page"},
                        "LicenseUrl": {"value": "https://creativecommons.org/licenses/by/4.0",
                                       "source": "commons-desc-page"}}}]}

    def api(query: dict[str, list[str]], headers: Any) -> Answer:
        assert query["iiurlwidth"] == ["640"] and query["formatversion"] == ["2"]
        if query.get("generator") == ["categorymembers"]:
            assert query["gcmtitle"] == ["Category:Smiling people"]
            if "gcmcontinue" not in query:
                return as_json({"batchcomplete": True,
                                "continue": {"gcmcontinue": "file|2", "continue": "gcmcontinue||"},
                                "query": {"pages": [page(1), page(2), page(3, "application/pdf")]}})
            assert query["gcmcontinue"] == ["file|2"]
            return as_json({"batchcomplete": True, "query": {"pages": [page(4)]}})
        assert query["generator"] == ["search"] and query["gsrnamespace"] == ["6"]
        if query["gsrsearch"] == ["sad person"]:
            return as_json({"batchcomplete": True, "query": {"pages": [page(5), page(6)]}})
        return as_json({"batchcomplete": True})

    routes: dict[str, Any] = {"/robots.txt": Answer(200, ROBOTS.encode()), "/w/api.php": api}
    for n in range(1, 7):
        routes[f"/wm/thumb/{n}.jpg"] = image(200 + n)
    return routes


def test_wikimedia_categories_and_search_with_licence_and_author(tmp_path: Path) -> None:
    with LoopbackSite() as site:
        site.routes.update(wikimedia_routes(site))
        source = {"kind": "wikimedia", "api_url": f"{site.url}/w/api.php",
                  "categories": {"happy": ["Category:Smiling people"]}, "search": True,
                  "batch_size": 3, "max_batches": 5, "thumb_width": 640, "max_images": 100}
        params = params_with({"commons": source}, site, tmp_path)
        report, records = run_scrape(params, tmp_path)
    by_label = {label: sorted(r.url.removeprefix(site.url) for r in records.values()
                              if r.label == label) for label in ("happy", "sad")}
    assert by_label == {"happy": ["/wm/thumb/1.jpg", "/wm/thumb/2.jpg", "/wm/thumb/4.jpg"],
                        "sad": ["/wm/thumb/5.jpg", "/wm/thumb/6.jpg"]}
    assert not [p for p in site.paths() if p.startswith("/wm/orig/")]  # thumbnails only
    record = records[f"{site.url}/wm/thumb/2.jpg"]
    assert record.source == "commons" and record.query == "Category:Smiling people"
    assert record.creator == "Jane & Co 2" and record.licence == "CC BY 4.0"
    assert record.licence_url == "https://creativecommons.org/licenses/by/4.0"
    assert record.page_url == "https://commons.wikimedia.example/wiki/File:Face_2.jpg"
    assert report.pages == {"happy": 3, "sad": 1}  # two category batches and one search each
    for record in records.values():  # every API image keeps its licence and author
        assert record.licence == "CC BY 4.0" and record.creator.startswith("Jane & Co ")
        assert record.attribution.endswith("via Wikimedia Commons")


# -- the folder source ----------------------------------------------------------------

def test_folder_source_imports_as_if_scraped(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    for label, names in {"happy": ["a.jpg", "nested/b.jpg", ".hidden.jpg"],
                         "sad": ["c.jpg"]}.items():
        for n, name in enumerate(names):
            path = tmp_path / "mine" / label / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(jpeg(300 + n + len(label)))
    (tmp_path / "mine" / "sad" / "c-copy.jpg").write_bytes((tmp_path / "mine/sad/c.jpg").read_bytes())
    with LoopbackSite() as site:
        params = params_with({"mine": {"kind": "folder", "path": "mine", "max_images": 10,
                                       "licence": "own work"}}, site, tmp_path)
        report, records = run_scrape(params, Path("."))
        assert sorted(records) == ["file:mine/happy/a.jpg", "file:mine/happy/nested/b.jpg",
                                   "file:mine/sad/c-copy.jpg", "file:mine/sad/c.jpg"]
        assert report.new_files == 3  # the copy is the same bytes: one file, two records
        record = records["file:mine/happy/nested/b.jpg"]
        assert record.source == "mine" and record.licence == "own work" and record.width == 96
        assert (Path("raw") / record.path).read_bytes() == (tmp_path / "mine/happy/nested/b.jpg").read_bytes()
        (tmp_path / "mine" / "sad" / "d.jpg").write_bytes(jpeg(399))
        again, records = run_scrape(params, Path("."))
    assert again.images_stored == 1 and again.already_had == 4 and len(records) == 5


def test_folder_limit_counts_earlier_imports(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine" / "happy").mkdir(parents=True)
    for n in range(3):
        (tmp_path / "mine" / "happy" / f"{n}.jpg").write_bytes(jpeg(500 + n))
    with LoopbackSite() as site:
        params = params_with({"mine": {"kind": "folder", "path": "mine", "max_images": 2}},
                             site, tmp_path)
        first, _ = run_scrape(params, Path("."))
        (tmp_path / "mine" / "happy" / "3.jpg").write_bytes(jpeg(503))
        (tmp_path / "mine" / "sad").mkdir()
        (tmp_path / "mine" / "sad" / "huge.jpg").write_bytes(b"\xff" * HUGE)  # over max_bytes
        again, records = run_scrape(params, Path("."))
    assert first.images_stored == 2
    assert again.images_stored == 0 and len(records) == 2  # the limit is on the folder, not a run
    assert again.errors == 1 and again.errors_by_kind == {"too_large": 1}


# -- pausing and resuming ---------------------------------------------------------------

def test_paused_crawl_resumes_from_its_queue(tmp_path: Path) -> None:
    pages, per_page = 12, 4
    with LoopbackSite() as site:
        site.routes["/robots.txt"] = Answer(200, b"User-agent: *\nAllow: /\n")
        for p in range(1, pages + 1):
            links = "".join(f'<img class="pic" src="/img/{p}-{i}.jpg">' for i in range(per_page))
            nxt = f'<a rel="next" href="/page/{p + 1}.html">next</a>' if p < pages else ""
            site.routes[f"/page/{p}.html"] = html(f"<div>{links}</div>{nxt}")
            for i in range(per_page):
                body = jpeg(p * 10 + i)
                site.routes[f"/img/{p}-{i}.jpg"] = (
                    lambda q, h, body=body: (time.sleep(0.15), Answer(
                        200, body, {"Content-Type": "image/jpeg"}))[1])
        source = {"kind": "gallery", "start_urls": {"happy": [f"{site.url}/page/1.html"]},
                  "image_selector": "img.pic", "next_page_selector": "a[rel=next]",
                  "max_pages": 100, "max_images": 1000}
        params_with({"web": source}, site, tmp_path, job_dir="job",
                             concurrent_requests=2, concurrent_requests_per_domain=2)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        command = [sys.executable, "-m", "pipeline", "--params", str(tmp_path / "params.yaml"),
                   "scrape", "--raw", "raw", "--reports", "reports"]
        proc = subprocess.Popen(command, cwd=tmp_path, env=env, start_new_session=True,
                                stderr=subprocess.PIPE, text=True)
        manifest = tmp_path / "raw" / "manifest.jsonl"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (
                manifest.exists() and manifest.read_text().count("\n") >= 6):
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal signals the whole group
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode != 0
        assert "the crawl was paused" in stderr.strip().splitlines()[-1]
        assert (tmp_path / "job" / "paused.json").exists()
        first = len(list(read_manifest(tmp_path / "raw")))
        assert 6 <= first < pages * per_page
        requests_before = len(site.log)
        resumed = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                                 timeout=120)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert "resuming a paused crawl" in resumed.stderr
        second = site.paths()[requests_before:]
    assert "/page/1.html" not in second  # resumed from the queue, not started over
    records = list(read_manifest(tmp_path / "raw"))
    assert sorted(r.url.removeprefix(site.url) for r in records) == sorted(
        f"/img/{p}-{i}.jpg" for p in range(1, pages + 1) for i in range(per_page))
    image_fetches = [p for p in site.paths() if p.startswith("/img/")]
    assert len(image_fetches) <= pages * per_page + 2  # at most what was in flight, twice
    assert not (tmp_path / "job").exists()  # a finished crawl leaves no queue behind


def test_crawl_settings_carry_politeness_from_params(tmp_path: Path) -> None:
    from scraper.crawl import crawl_settings

    with LoopbackSite() as site:
        params = params_with({"web": {"kind": "gallery", "start_urls": {"happy": [site.url]},
                                      "image_selector": "img", "max_pages": 1, "max_images": 1}},
                             site, tmp_path, job_dir="job",
                             domain_limits={"upload.example.org": {"concurrency": 2, "delay_s": 1.5}})
    from pipeline.scrape.crawl_config import crawl_config

    config = crawl_config(params.scrape, tmp_path / "raw", tmp_path, None)
    settings = crawl_settings({**config, "job_dir": str(tmp_path / "job")})
    assert settings["DOWNLOAD_SLOTS"] == {"upload.example.org": {"concurrency": 2, "delay": 1.5}}
    assert settings["USER_AGENT"].startswith("happysad/")
    assert settings["USER_AGENT"].endswith("; crawler-owner@example.org)")
    assert settings.getdict("DEFAULT_REQUEST_HEADERS")["From"] == "crawler-owner@example.org"
    assert settings["JOBDIR"] == str(tmp_path / "job")
    assert settings.getbool("ROBOTSTXT_OBEY")
    assert settings.getlist("HAPPYSAD_ALLOW_PRIVATE_HOSTS") == [site.host_port]


def test_a_source_the_address_guard_refuses_outright_fails_the_stage(tmp_path: Path) -> None:
    """A loopback gallery not in allow_private_hosts stores nothing: scrape says why, at once."""
    with LoopbackSite() as site:
        site.routes.update({"/gallery/happy.html": html("<img src='/img/a.jpg'>")})
        source = {"kind": "gallery", "start_urls": {"happy": [f"{site.url}/gallery/happy.html"]},
                  "image_selector": "img", "max_pages": 1, "max_images": 10}
        params = params_with({"web": source}, site, tmp_path, allow_private_hosts=[])
        with pytest.raises(UserError, match=r"source web gave no page and no image: the address "
                                            r"guard refused \d+ request"):
            run_scrape(params, tmp_path)
        assert site.paths() == []  # nothing was fetched from it


def test_every_web_kind_of_params_has_one_plugin_and_back() -> None:
    """The registry finds each kind's module by itself: a kind in params.yaml's Source union
    (all but the folder import, which is not crawled) has exactly one plugin of that name,
    whose params model is that kind's."""
    import typing

    from pipeline.config.scrape import FolderSource, Source
    from scraper.sources import registry

    models = {m.model_fields["kind"].annotation.__args__[0]: m
              for m in typing.get_args(typing.get_args(Source)[0]) if m is not FolderSource}
    kinds = registry()
    assert set(kinds) == set(models)
    for kind, plugin in kinds.items():
        assert plugin.kind == kind and plugin.params_model is models[kind]
