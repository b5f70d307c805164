"""``happysad <stage>`` / ``python -m pipeline <stage>``: thin shells over the stage functions."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pipeline.errors import UserError
from pipeline.log import setup_logging
from pipeline.params import DEFAULT_PARAMS, load_params

logger = logging.getLogger("happysad")


def _scrape(args: argparse.Namespace) -> None:
    from pipeline.scrape import scrape

    params = load_params(args.params)
    report = scrape(params.scrape, params.demo_site, args.raw, args.reports, args.site_dir)
    logger.info("scrape: %d images stored (%d new files), %d already had, %d blocked, "
                "%d errors; %s now holds %s files", report.images_stored, report.new_files,
                report.already_had, report.blocked, report.errors, args.raw,
                sum(report.raw_files.values()))


def _clean(args: argparse.Namespace) -> None:
    from pipeline.clean import clean

    report = clean(args.raw, args.out, load_params(args.params).clean)
    logger.info("clean: kept %s; rejected %s; %d near-duplicate groups, %d label conflicts; "
                "outputs in %s", report.kept, report.rejected, report.near_duplicate_groups,
                report.label_conflicts, args.out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="happysad", description=__doc__)
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS,
                        help="params file (default: %(default)s)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")

    scrape = sub.add_parser("scrape", help="crawl images into data/raw")
    scrape.add_argument("--raw", type=Path, default=Path("data/raw"))
    scrape.add_argument("--reports", type=Path, default=Path("reports/scrape"))
    scrape.add_argument("--site-dir", type=Path, default=Path("data/demo_site"),
                        help="where the demo site is generated (default: %(default)s)")
    scrape.set_defaults(run=_scrape)

    clean = sub.add_parser("clean", help="validate and deduplicate data/raw into data/clean")
    clean.add_argument("--raw", type=Path, default=Path("data/raw"))
    clean.add_argument("--out", type=Path, default=Path("data/clean"))
    clean.set_defaults(run=_clean)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        args.run(args)
    except UserError as err:
        sys.stderr.write(f"happysad {args.stage}: error: {err}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"happysad {args.stage}: interrupted; finished work is kept\n")
        return 130
    return 0
