"""``python -m demo generate|serve``: build the demo site, or browse it.

``serve --for-stage`` is how the scrape stage hosts the site while it crawls:
the site is (re)generated from the params given as JSON if it is stale, the
address goes to ``--url-file`` once the port is open, and the server runs until
its standard input closes (the stage closes it, or dies). Ctrl-C and SIGTERM,
which the terminal and Prefect send to the whole process group, are ignored, so
the crawl can finish what is in flight while it pauses.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

from demo.server import DemoSiteServer
from demo.site import ensure_site, generate_site
from pipeline.config.loader import load_sections
from pipeline.config.scrape import DemoSiteParams
from pipeline.runtime.errors import UserError
from pipeline.runtime.project import DEFAULT_PARAMS

log = logging.getLogger("demo")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="write the demo site into a folder")
    gen.add_argument("out", type=Path)
    gen.add_argument("--params", type=Path, default=DEFAULT_PARAMS,
                     help="the demo_site section of this file (default: %(default)s)")
    gen.add_argument("--seed", type=int, help="instead of demo_site.seed")
    gen.add_argument("--images-per-class", type=int, help="instead of demo_site.images_per_class")
    serve = sub.add_parser("serve", help="serve a generated site on 127.0.0.1 until Ctrl-C")
    serve.add_argument("site", type=Path)
    serve.add_argument("--port", type=int, default=0)
    serve.add_argument("--for-stage", type=Path, metavar="CONFIG_JSON",
                       help="host the site for the scrape stage (see above)")
    serve.add_argument("--url-file", type=Path, help="with --for-stage: where to write the URL")
    return parser


def _generate(args: argparse.Namespace) -> int:
    config = load_sections(args.params, demo_site=DemoSiteParams).demo_site
    overrides = {"seed": args.seed, "images_per_class": args.images_per_class}
    config = DemoSiteParams.model_validate(
        {**config.model_dump(), **{k: v for k, v in overrides.items() if v is not None}})
    started = time.perf_counter()
    generate_site(args.out, config)
    log.info("generated in %.1f s", time.perf_counter() - started)
    return 0


def _serve_for_stage(args: argparse.Namespace) -> int:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    config = DemoSiteParams.model_validate(json.loads(args.for_stage.read_text()))
    ensure_site(args.site, config)
    try:
        server = DemoSiteServer(args.site, port=args.port)
    except OSError:  # that port is taken now: any other will do, and the stage is told
        server = DemoSiteServer(args.site)
    with server:
        partial = args.url_file.with_name(args.url_file.name + ".part")
        partial.write_text(server.base_url)
        os.replace(partial, args.url_file)
        sys.stdin.buffer.read()  # until the stage closes our input, or dies
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "generate":
            return _generate(args)
        if args.for_stage is not None:
            return _serve_for_stage(args)
    except UserError as err:
        sys.stderr.write(f"python -m demo: error: {err}\n")
        return 2
    if not (args.site / "www").is_dir():
        log.error("%s is not a generated demo site: run 'python -m demo generate %s'",
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
