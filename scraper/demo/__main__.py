"""``python -m scraper.demo generate|serve``: build the demo site, or browse it."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from scraper.demo.server import DemoSiteServer
from scraper.demo.site import DemoSiteConfig, generate_site


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scraper.demo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="write the demo site into a folder")
    gen.add_argument("out", type=Path)
    gen.add_argument("--seed", type=int, default=DemoSiteConfig.seed)
    gen.add_argument("--images-per-class", type=int, default=DemoSiteConfig.images_per_class)
    serve = sub.add_parser("serve", help="serve a generated site on 127.0.0.1 until Ctrl-C")
    serve.add_argument("site", type=Path)
    serve.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("scraper.demo")

    if args.command == "generate":
        started = time.perf_counter()
        config = DemoSiteConfig(seed=args.seed, images_per_class=args.images_per_class)
        generate_site(args.out, config)
        log.info("generated in %.1f s", time.perf_counter() - started)
        return 0
    if not (args.site / "www").is_dir():
        log.error("%s is not a generated demo site: run 'python -m scraper.demo generate %s'",
                  args.site, args.site)
        return 2
    with DemoSiteServer(args.site, port=args.port) as server:
        log.info("serving %s at %s/ (Ctrl-C to stop)", args.site, server.base_url)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0


if __name__ == "__main__":
    sys.exit(main())
