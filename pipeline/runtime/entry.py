"""How a command runs: its flags, logging, and one line instead of a traceback for what a user
can fix. ``python -m pipeline.stages.<stage>`` (the command in ``dvc.yaml``) and ``happysad
<command>`` both come through here, so a stage depends on this module and not on the CLI."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from pipeline.runtime.errors import UserError
from pipeline.runtime.files import describe_os_error
from pipeline.runtime.lifeline import die_with_dvc
from pipeline.runtime.log import setup_logging
from pipeline.runtime.project import DEFAULT_PARAMS


def add_common_arguments(parser: argparse.ArgumentParser, inherited: bool = False) -> None:
    """The flags every command takes: the params file and debug logging. ``inherited``: a
    subcommand's copy, which leaves the value given before the subcommand alone."""
    parser.add_argument("--params", type=Path,
                        default=argparse.SUPPRESS if inherited else DEFAULT_PARAMS,
                        help=f"params file (default: {DEFAULT_PARAMS})")
    parser.add_argument("-v", "--verbose", action="store_true",
                        default=argparse.SUPPRESS if inherited else False, help="debug logging")


def run_command(name: str, run: Callable[[argparse.Namespace], None],
                args: argparse.Namespace) -> int:
    """``run(args)`` with logging set up; a ``UserError`` or ``OSError`` becomes one line on
    stderr (exit 2 or 1; ``-v`` re-raises the OSError), an interrupt exit 130."""
    setup_logging(args.verbose)
    try:
        run(args)
    except UserError as err:
        sys.stderr.write(f"happysad {name}: error: {err}\n")
        return 2
    except OSError as err:  # a full disk, a folder it may not write: one line, not a traceback
        if args.verbose:
            raise
        sys.stderr.write(f"happysad {name}: error: {describe_os_error(err)}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write(f"happysad {name}: interrupted; finished work is kept\n")
        return 130
    logging.getLogger("happysad").debug("%s done", name)
    return 0


def main(module_name: str, argv: list[str] | None = None) -> int:
    """``python -m pipeline.stages.<stage>``: the stage module imported under its own name (not
    as ``__main__``, so its log lines name it), its flags, then ``run_command``."""
    die_with_dvc()  # a stage run by `dvc repro` ends when DVC does, even after kill -9
    module = importlib.import_module(module_name)
    name = module_name.rsplit(".", 1)[-1]
    parser = argparse.ArgumentParser(prog=f"happysad {name}",
                                     description=(module.__doc__ or "").splitlines()[0])
    add_common_arguments(parser)
    module.add_arguments(parser)
    return run_command(name, module.run, parser.parse_args(argv))
