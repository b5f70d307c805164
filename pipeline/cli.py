"""``happysad <command>`` / ``python -m pipeline <command>``: dispatch to a command module.

A command is a module of this package with ``add_arguments(parser)`` and
``run(args)``, listed in ``COMMANDS``: the DAG's stages (each ``dvc.yaml`` stage's
cmd is ``python -m pipeline <stage>``) and the tools around them. Only the
chosen command's module is imported, so ``happysad --help`` starts no TensorFlow
and a stage depends on no other stage's code.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import logging
import re
import sys
from pathlib import Path

from pipeline.errors import UserError
from pipeline.files import describe_os_error
from pipeline.lifeline import die_with_dvc
from pipeline.log import setup_logging
from pipeline.params import DEFAULT_PARAMS

_PACKAGE = Path(__file__).resolve().parent
# Command name -> module (in this package); the stages in DAG order, then the tools.
COMMANDS = {
    "scrape": "scrape", "clean": "clean", "split": "split", "tfrecords": "tfrecords",
    "train": "train", "crossval": "crossval", "evaluate": "evaluate", "save": "save",
    "suspects": "suspects",
    "predict": "predict", "promote": "promote", "tune": "tune", "review": "review",
    "labelstudio": "labelstudio", "preset": "preset",
}


def available_stages() -> list[str]:
    """Every command's name, in ``COMMANDS`` order."""
    return list(COMMANDS)


def summary(name: str) -> str:
    """The first line of a command module's docstring, as plain text (read, not imported,
    so `happysad --help` starts no TensorFlow)."""
    doc = ast.get_docstring(ast.parse((_PACKAGE / f"{COMMANDS[name]}.py").read_text())) or ""
    line = re.sub(r"``([^`]*)``", r"\1", doc.splitlines()[0] if doc else "")
    return re.sub(r"^(?:The \w+ stage|happysad \w+ [^:]*): ", "", line).rstrip(".")


def build_parser(stage: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="happysad", description="The stages of the happysad pipeline and its tools; "
        "`dvc repro` runs the stages in order, `happysad STAGE` runs one.",
        epilog="`happysad COMMAND --help` lists a command's options.")
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS,
                        help="params file (default: %(default)s)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"happysad {_version()}")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="COMMAND")
    for name in available_stages():
        if stage is None or name != stage:
            sub.add_parser(name, add_help=False, help=summary(name))
            continue
        module = importlib.import_module(f"pipeline.{COMMANDS[name]}")
        stage_parser = sub.add_parser(name, help=summary(name), description=summary(name))
        module.add_arguments(stage_parser)
        stage_parser.set_defaults(run=module.run)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("happysad")
    except PackageNotFoundError:  # run from a checkout that is not installed
        return "unknown"


def _stage_named(argv: list[str]) -> str | None:
    stages = set(available_stages())
    return next((a for a in argv if a in stages), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    die_with_dvc()  # a stage run by `dvc repro` ends when DVC does, even after kill -9
    args = build_parser(_stage_named(argv)).parse_args(argv)
    setup_logging(args.verbose)
    try:
        args.run(args)
    except UserError as err:
        sys.stderr.write(f"happysad {args.stage}: error: {err}\n")
        return 2
    except OSError as err:  # a full disk, a folder it may not write: one line, not a traceback
        if args.verbose:
            raise
        sys.stderr.write(f"happysad {args.stage}: error: {describe_os_error(err)}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write(f"happysad {args.stage}: interrupted; finished work is kept\n")
        return 130
    logging.getLogger("happysad").debug("stage %s done", args.stage)
    return 0
