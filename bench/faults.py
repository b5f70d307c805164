"""The fault with a figure: a gallery page of 100,000 ``<img>`` tags, crawled with the
``scrape.crawl.max_page_elements`` cap and, as the baseline, with no cap (the cap set
above the page's size), side by side. Both fetch the same 2000 images (the source's
``max_images``); the difference is the work of parsing elements nobody will fetch.

Run: ``uv run python -m bench.faults [--images 100000]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench import print_table
from testing.sites import Answer, LoopbackSite, html, image, params_with, run_scrape


def _crawl(site: LoopbackSite, work: Path, cap: int) -> tuple[float, int]:
    source = {"kind": "gallery", "max_pages": 5, "max_images": 2000, "image_selector": "img",
              "start_urls": {"happy": [f"{site.url}/flood.html"]}}
    work.mkdir(parents=True)
    started = time.perf_counter()
    report, _ = run_scrape(params_with({"web": source}, site, work, max_page_elements=cap,
                                       progress_every_s=60.0), work)
    return time.perf_counter() - started, report.images_stored


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    args = parser.parse_args(argv)
    flood = "".join(f'<img src="/img/{i}.jpg">' for i in range(args.images))
    rows = []
    with tempfile.TemporaryDirectory(prefix="happysad-bench-") as tmp, LoopbackSite() as site:
        site.routes.update({"/robots.txt": Answer(200, b"", {"Content-Type": "text/plain"}),
                            "/flood.html": html(f"<html><body>{flood}</body></html>")})
        site.routes.update({f"/img/{i}.jpg": image(i) for i in range(2000)})
        capped, stored = _crawl(site, Path(tmp) / "capped", 2000)
        uncapped, stored_all = _crawl(site, Path(tmp) / "uncapped", args.images + 1)
    rows.append((f"crawl of a {args.images:,}-<img> page, cap 2000", f"{capped:.1f} s",
                 f"{stored} images stored; x{capped / uncapped:.2f} the uncapped crawl"))
    rows.append(("  no cap (baseline)", f"{uncapped:.1f} s", f"{stored_all} images stored"))
    print_table("happysad fault benchmark", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
