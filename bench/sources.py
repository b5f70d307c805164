"""Benchmark: a 10k-image crawl of a gallery source against a local server, beside that
server's raw serving rate, with the crawl's peak memory.

Measured side by side in one run (this machine is shared and noisy):

1. the raw serving rate of the loopback gallery server (the one the source tests use,
   serving from memory): every image fetched by a plain urllib client at 16 threads;
2. the spider (politeness off: no AutoThrottle, no delay; robots.txt, the address guard
   and the opt-out checks on) crawling the gallery's result pages and storing every
   image in a fresh data/raw, at 16 requests in flight: images stored per second from
   the engine's start to its finish, and the crawl process's peak resident memory;
3. bare Scrapy fetching the same image URLs, scheduled up front (the framework's ceiling);
4. the same crawl at a tenth of the size, to show whether memory grows with the crawl.

Run: ``uv run python -m bench.sources [--images 10000] [--per-page 50]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from bench import print_table
from bench.crawl import bare_scrapy_rate
from pipeline.config.params import load_params
from pipeline.scrape.crawl_config import crawl_config
from pipeline.scrape.process import run_crawl_subprocess
from testing.sites import Answer, LoopbackSite, html, jpeg

REPO = Path(__file__).resolve().parents[1]


def gallery(site: LoopbackSite, images: int, per_page: int, prefix: str) -> list[str]:
    """Result pages /<prefix>/page/N.html with ``per_page`` images each; returns image paths."""
    paths = [f"/{prefix}/img/{n}.jpg" for n in range(images)]
    bodies = {path: jpeg(n, size=128) for n, path in enumerate(paths)}
    pages = (images + per_page - 1) // per_page
    for p in range(pages):
        chunk = paths[p * per_page:(p + 1) * per_page]
        links = "".join(f'<figure class="r"><img src="{path}"></figure>' for path in chunk)
        nxt = f'<a rel="next" href="/{prefix}/page/{p + 1}.html">next</a>' if p + 1 < pages else ""
        site.routes[f"/{prefix}/page/{p}.html"] = html(f"<main>{links}</main><nav>{nxt}</nav>")
    for path, body in bodies.items():
        site.routes[path] = Answer(200, body, {"Content-Type": "image/jpeg"})
    site.routes["/robots.txt"] = Answer(200, b"User-agent: *\nDisallow: /private/\n")
    return paths


def raw_rate(base: str, paths: list[str], workers: int = 16) -> float:
    def fetch(path: str) -> int:
        with urllib.request.urlopen(base + path, timeout=30) as resp:
            return len(resp.read())

    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        assert sum(pool.map(fetch, paths)) > 0
    return len(paths) / (time.perf_counter() - started)


def crawl(site: LoopbackSite, prefix: str, work: Path, concurrency: int) -> dict[str, Any]:
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    data["scrape"]["demo_site"] = False
    data["scrape"]["sources"] = {"bench": {
        "kind": "gallery", "start_urls": {"happy": [f"{site.url}/{prefix}/page/0.html"]},
        "image_selector": "figure.r img", "next_page_selector": "a[rel=next]",
        "max_pages": 100000, "max_images": 1000000}}
    data["scrape"]["crawl"].update({
        "autothrottle": False, "download_delay_s": 0.0, "concurrent_requests": concurrency,
        "concurrent_requests_per_domain": concurrency, "progress_every_s": 30.0,
        "allow_private_hosts": [site.host_port], "job_dir": None})
    work.mkdir(parents=True, exist_ok=True)
    (work / "params.yaml").write_text(yaml.safe_dump(data))
    params = load_params(work / "params.yaml")
    stats = run_crawl_subprocess(crawl_config(params.scrape, work / "raw", work, None), work)
    elapsed = (datetime.fromisoformat(stats["finish_time"])
               - datetime.fromisoformat(stats["start_time"])).total_seconds()
    return {"stored": int(stats.get("happysad/images_stored", 0)), "elapsed": elapsed,
            "rss": float(stats["happysad/peak_rss_mb"])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--per-page", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args(argv)
    small = max(args.images // 10, args.per_page)
    with tempfile.TemporaryDirectory(prefix="happysad-bench-") as tmp, LoopbackSite() as site:
        big_paths = gallery(site, args.images, args.per_page, "big")
        gallery(site, small, args.per_page, "small")
        raw_before = raw_rate(site.url, big_paths)
        big = crawl(site, "big", Path(tmp) / "big", args.concurrency)
        raw_after = raw_rate(site.url, big_paths)
        bare = bare_scrapy_rate(site.url, big_paths, args.concurrency)
        little = crawl(site, "small", Path(tmp) / "small", args.concurrency)
    raw = max(raw_before, raw_after)
    rate = big["stored"] / big["elapsed"]
    rows = [
        ("loopback server, raw serving rate", f"{raw:.0f} img/s",
         f"urllib, 16 threads, {len(big_paths)} images (before {raw_before:.0f}, after "
         f"{raw_after:.0f})"),
        (f"spider, {big['stored']}-image crawl", f"{rate:.0f} img/s",
         f"x{rate / raw:.2f} the raw rate; {big['elapsed']:.0f} s; concurrency "
         f"{args.concurrency}, politeness off, robots/guard/opt-outs on"),
        ("  bare Scrapy, same image URLs", f"{bare:.0f} img/s",
         f"x{bare / raw:.2f} the raw rate: the framework's ceiling here (scheduled up front, "
         f"nothing parsed or stored); the spider reaches x{rate / bare:.2f} of it"),
        (f"  peak memory, {big['stored']} images", f"{big['rss']:.0f} MB",
         "resident, crawl process"),
        (f"  peak memory, {little['stored']} images", f"{little['rss']:.0f} MB",
         f"the same crawl at a tenth of the size ({little['stored'] / little['elapsed']:.0f} img/s)"),
    ]
    print_table("happysad web-source crawl benchmark", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
