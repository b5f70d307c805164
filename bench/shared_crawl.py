"""Benchmark: one crawl shared by several crawler processes through Redis, against one process.

The demo site (``--images-per-class``, default 300) is crawled into an empty data/raw, side
by side in one run: by one process (today's scrape stage), then through a Redis server on
loopback by 1, 2 and 4 workers. Two settings:

* politeness off (no AutoThrottle, no delay, 8 requests in flight per process): the crawl
  is bound by this machine's CPU (parsing, hashing, Twisted), so on 2 cores more
  processes help only as far as the cores go;
* polite (one request at a time per process, 0.05 s between requests): a real web
  crawl's case, bound by waiting, where each worker adds its own rate. (A site then
  sees N workers' concurrency: divide ``concurrent_requests_per_domain`` by N.)

Each row also counts the fetches beyond what one process asks for (robots.txt, once per
worker, aside): the shared queue and filter must keep it at 0. The rates include starting
the crawler processes (a few seconds), as a user waits for them.

Run: ``uv run python -m bench.shared_crawl [--images-per-class N]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench import print_table
from demo.server import DemoSiteServer
from demo.site import generate_site
from pipeline.config.params import Params, load_params
from pipeline.contracts import crawl as stat
from pipeline.scrape.job import crawl
from testing.redis import redis_server


def _with(params: Params, **crawl: object) -> Params:
    changed = params.scrape.crawl.model_copy(update={"autothrottle": False,
                                                     "progress_every_s": 60.0, **crawl})
    return params.model_copy(update={"scrape": params.scrape.model_copy(update={"crawl": changed})})


def _run(site: Path, params: Params, out: Path,
         redis_url: str | None) -> tuple[float, int, Counter]:
    """Images stored per second, images stored, and how often each URL was served."""
    if redis_url:
        os.environ[stat.REDIS_ENV] = redis_url
    else:
        os.environ.pop(stat.REDIS_ENV, None)
    with DemoSiteServer(site) as server:
        started = time.perf_counter()
        stats = crawl(params.scrape, out / "raw", out / "work", server.base_url, None)
        elapsed = time.perf_counter() - started
        served = Counter(server.requests)
    stored = int(stats.get(stat.IMAGES_STORED, 0))
    return stored / elapsed, stored, served


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images-per-class", type=int, default=300)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args(argv)
    params = load_params(Path("params.yaml"))
    site_config = params.demo_site.model_copy(update={"images_per_class": args.images_per_class})
    settings = {
        "politeness off": dict(download_delay_s=0.0, concurrent_requests=8,
                               concurrent_requests_per_domain=8),
        "polite": dict(download_delay_s=0.05, concurrent_requests=1,
                       concurrent_requests_per_domain=1),
    }
    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="happysad-bench-") as tmp:
        tmp_path = Path(tmp)
        site = tmp_path / "site"
        generate_site(site, site_config)
        with redis_server(tmp_path / "redis") as url:
            for name, knobs in settings.items():
                base: tuple[float, Counter] | None = None
                for workers in [0, *args.workers]:
                    run_params = _with(params, shared_workers=max(workers, 1), **knobs)
                    rate, stored, served = _run(site, run_params, tmp_path / f"{name}-{workers}",
                                                url if workers else None)
                    base = base or (rate, served)
                    extra = sum((served - base[1] - Counter({"/robots.txt": workers})).values())
                    label = "one process" if not workers else f"shared, {workers} workers"
                    rows.append((f"{name}: {label}", f"{rate:.1f} img/s",
                                 f"x{rate / base[0]:.2f} of one process; {stored} stored, "
                                 f"{extra} fetches beyond one process's (robots.txt aside)"))
    print_table(f"Shared crawl (demo site, {args.images_per_class} faces per class, "
                f"{os.cpu_count()} cores)", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
