"""Benchmark: demo-site generation time, and crawl throughput against raw HTTP serving.

Measured side by side in one run (this machine is shared and noisy):

1. generating the demo site at the default size from params.yaml, on all cores and on one;
2. the raw serving rate of ``python -m http.server`` for the site's image files,
   fetched by a plain urllib client at 1, 4 and 16 threads (what that server can give);
3. the spider, politeness off (no AutoThrottle, no delay), crawling the demo site
   (pages, detail pages, robots.txt, the planted 404/500/redirect) at 4 and 16
   requests in flight; the same client's rate against the demo server is printed
   beside http.server's, to show which server limits the spider.

``python -m http.server`` listens with a backlog of 5: under load its accept loop
falls behind and dropped SYNs cost 1 s retransmits, which is why its rate drops
at 16 threads and why the spider is not pointed at it.

Run: ``make bench`` or ``uv run python -m bench.crawl [--images-per-class N]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

from bench import print_table
from demo.server import DemoSiteServer
from demo.site import generate_site
from flows.server import free_port
from pipeline.config.params import Params, load_params
from pipeline.config.scrape import DemoSiteParams
from pipeline.scrape.crawl_config import crawl_config
from pipeline.scrape.process import run_crawl_subprocess


def time_generation(config: DemoSiteParams, out: Path, workers: int = 0) -> float:
    started = time.perf_counter()
    generate_site(out, config, workers)
    return time.perf_counter() - started


def raw_serving_rate(base_url: str, paths: list[str], workers: int) -> float:
    """Images per second that the server hands to a plain concurrent client."""
    def fetch(path: str) -> int:
        with urllib.request.urlopen(base_url + path, timeout=30) as resp:
            return len(resp.read())

    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        total = sum(pool.map(fetch, paths))
    assert total > 0
    return len(paths) / (time.perf_counter() - started)


def crawl_rate(params: Params, base_url: str, work: Path) -> tuple[float, int]:
    """Images per second the spider stores, from the engine's start to its finish."""
    raw = work / "raw"
    config = crawl_config(params.scrape, raw, work, base_url)
    stats = run_crawl_subprocess(config, work)
    elapsed = (datetime.fromisoformat(stats["finish_time"])
               - datetime.fromisoformat(stats["start_time"])).total_seconds()
    stored = int(stats.get("happysad/images_stored", 0))
    return stored / elapsed, stored


_BARE_SPIDER = """
import json, sys, time
import scrapy
from scrapy.crawler import CrawlerProcess
base, level = sys.argv[1], int(sys.argv[3])
paths = json.loads(open(sys.argv[2]).read())
class Bare(scrapy.Spider):
    name = "bare"
    async def start(self):
        for path in paths:
            yield scrapy.Request(base + path, callback=self.parse)
    def parse(self, response):
        pass
process = CrawlerProcess({"LOG_LEVEL": "ERROR", "CONCURRENT_REQUESTS": level,
                          "CONCURRENT_REQUESTS_PER_DOMAIN": level,
                          "TELNETCONSOLE_ENABLED": False, "REMOTE_CONTROL_ENABLED": False})
crawler = process.create_crawler(Bare)
process.crawl(crawler)
process.start()
stats = crawler.stats.get_stats()
print(len(paths) / (stats["finish_time"] - stats["start_time"]).total_seconds())
"""


def bare_scrapy_rate(base_url: str, paths: list[str], level: int) -> float:
    """Scrapy's own ceiling: the same URLs, scheduled up front, nothing parsed or stored."""
    with tempfile.NamedTemporaryFile("w", suffix=".json") as listing:
        json.dump(paths, listing)
        listing.flush()
        out = subprocess.run([sys.executable, "-c", _BARE_SPIDER, base_url, listing.name,
                              str(level)], capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def impolite(params: Params, concurrency: int) -> Params:
    """The params with AutoThrottle and delays off and the given concurrency."""
    crawl = params.scrape.crawl.model_copy(update={
        "autothrottle": False, "download_delay_s": 0.0, "concurrent_requests": concurrency,
        "concurrent_requests_per_domain": concurrency, "progress_every_s": 60.0})
    return params.model_copy(update={"scrape": params.scrape.model_copy(update={"crawl": crawl})})


def _wait_until_up(base: str) -> None:
    for _ in range(100):
        try:
            urllib.request.urlopen(base + "/robots.txt", timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)


def _generation_rows(config: DemoSiteParams, tmp_path: Path) -> list[tuple[str, str, str]]:
    gen_all = time_generation(config, tmp_path / "site")
    gen_one = time_generation(config, tmp_path / "site1", workers=1)
    return [("demo site generation, all cores", f"{gen_all:.1f} s",
             f"{config.images_per_class} faces per class and the planted faults"),
            ("demo site generation, one core", f"{gen_one:.1f} s",
             f"all cores are x{gen_one / gen_all:.2f} faster")]


def _rates(params: Params, site: Path, paths: list[str], levels: list[int],
           tmp_path: Path) -> tuple[dict, dict, dict, dict]:
    """Side by side, per level: http.server and the demo server to a plain client, the spider,
    and bare Scrapy."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                               "127.0.0.1", "--directory", str(site / "www")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    raw: dict[int, float] = {}
    demo_raw: dict[int, float] = {}
    spider: dict[int, tuple[float, int]] = {}
    bare: dict[int, float] = {}
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_until_up(base)
        with DemoSiteServer(site) as demo:
            for level in sorted({1, *levels}):  # interleaved: drift hits every row alike
                raw[level] = raw_serving_rate(base, paths, level)
                demo_raw[level] = raw_serving_rate(demo.base_url, paths, level)
                if level in levels:
                    spider[level] = crawl_rate(impolite(params, level), demo.base_url,
                                               tmp_path / f"crawl-{level}")
                    bare[level] = bare_scrapy_rate(demo.base_url, paths, level)
    finally:
        server.terminate()
        server.wait()
    return raw, demo_raw, spider, bare


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images-per-class", type=int, default=None,
                        help="site size (default: params.yaml's demo_site.images_per_class)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[4, 16])
    args = parser.parse_args(argv)
    params = load_params(Path("params.yaml"))
    config = params.demo_site
    if args.images_per_class:
        config = config.model_copy(update={"images_per_class": args.images_per_class})
    levels = sorted(set(args.concurrency))
    with tempfile.TemporaryDirectory(prefix="happysad-bench-") as tmp:
        tmp_path = Path(tmp)
        rows = _generation_rows(config, tmp_path)
        # The throughput site: the same, but the planted slow link answers at once, so
        # the figure is the spider's rate rather than one sleeping request's.
        site = tmp_path / "site-fast"
        generate_site(site, config.model_copy(update={"slow_response_s": 0.0}))
        truth = json.loads((site / "ground_truth.json").read_text())
        paths = sorted({i["url"] for i in truth["images"]
                        if i["fetch"] == "stored" and i["kind"] != "redirect"})
        raw, demo_raw, spider, bare = _rates(params, site, paths, levels, tmp_path)
    best = max(raw.values())
    for level, rate in raw.items():
        rows.append((f"python -m http.server raw, {level} client thread(s)", f"{rate:.0f} img/s",
                     f"{len(paths)} files; demo server, same client: {demo_raw[level]:.0f} img/s"))
    for level, (rate, stored) in spider.items():
        rows.append((f"spider on the demo site, concurrency {level}", f"{rate:.0f} img/s",
                     f"ratio {rate / best:.2f} of http.server's best ({stored} images stored)"))
        rows.append((f"  bare Scrapy, same URLs, concurrency {level}", f"{bare[level]:.0f} img/s",
                     f"ratio {bare[level] / best:.2f}: the framework's ceiling here; the spider "
                     f"reaches {rate / bare[level]:.2f} of it"))
    print_table("happysad crawl benchmark (politeness off; robots.txt still obeyed)", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
