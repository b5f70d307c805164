"""``happysad <command>`` / ``python -m pipeline <command>``: dispatch to a command module.

A command is a module with ``add_arguments(parser)`` and ``run(args)``, listed in
``COMMANDS``: the DAG's stages (``pipeline.stages``; ``dvc.yaml`` runs each as ``python -m
pipeline.stages.<stage>``, which does not come through here) and the tools around them. Only the
chosen command's module is imported, so ``happysad --help`` starts no TensorFlow.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import re
import sys
from pathlib import Path

from pipeline.runtime.entry import add_common_arguments, run_command
from pipeline.runtime.lifeline import die_with_dvc

_PACKAGE = Path(__file__).resolve().parent
# Command name -> module under pipeline/: the stages in DAG order, then the tools.
COMMANDS = {
    "scrape": "stages.scrape", "clean": "stages.clean", "split": "stages.split",
    "tfrecords": "stages.tfrecords", "pretrain": "stages.pretrain", "train": "stages.train",
    "crossval": "stages.crossval",
    "evaluate": "stages.evaluate", "save": "stages.save", "suspects": "stages.suspects",
    "predict": "tools.predict", "promote": "tools.promote", "tune": "tools.tune",
    "preset": "tools.preset", "review": "tools.review", "labelstudio": "tools.labelstudio",
    "serve-model": "tools.serve_model",
}


def available_commands() -> list[str]:
    """Every command's name, in ``COMMANDS`` order."""
    return list(COMMANDS)


def module_path(name: str) -> Path:
    """The file of command ``name``'s module."""
    return _PACKAGE / (COMMANDS[name].replace(".", "/") + ".py")


def summary(name: str) -> str:
    """The first line of a command module's docstring, as plain text (read, not imported,
    so `happysad --help` starts no TensorFlow)."""
    doc = ast.get_docstring(ast.parse(module_path(name).read_text())) or ""
    line = re.sub(r"``([^`]*)``", r"\1", doc.splitlines()[0] if doc else "")
    return re.sub(r"^(?:The \w+ stage|happysad [\w-]+(?: [^:]*)?): ", "", line).rstrip(".")


def build_parser(stage: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="happysad", description="The stages of the happysad pipeline and its tools; "
        "`dvc repro` runs the stages in order, `happysad STAGE` runs one.",
        epilog="`happysad COMMAND --help` lists a command's options.")
    add_common_arguments(parser)
    parser.add_argument("--version", action="version", version=f"happysad {_version()}")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="COMMAND")
    for name in available_commands():
        if stage is None or name != stage:
            sub.add_parser(name, add_help=False, help=summary(name))
            continue
        module = importlib.import_module(f"pipeline.{COMMANDS[name]}")
        stage_parser = sub.add_parser(name, help=summary(name), description=summary(name))
        add_common_arguments(stage_parser, inherited=True)
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
    stages = set(available_commands())
    return next((a for a in argv if a in stages), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    die_with_dvc()  # a stage run by `dvc repro` ends when DVC does, even after kill -9
    args = build_parser(_stage_named(argv)).parse_args(argv)
    return run_command(args.stage, args.run, args)
