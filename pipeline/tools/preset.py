"""happysad preset NAME: set a preset's params (presets/NAME.yaml) in params.yaml.

A preset is a params.yaml fragment of settings for a kind of data (docs/real-photos.md says
which for which). Its keys replace params.yaml's, which keeps its comments and its
other keys; the result is validated as a whole before anything is written, and each change
is logged (``train.first_stride: 2 -> 1``). DVC then sees changed params: ``dvc repro`` (or
``dvc exp run``) trains with them, and ``git diff params.yaml`` shows what the preset did.
"""

from __future__ import annotations

import argparse
import io
import logging
from pathlib import Path
from typing import Any

from pipeline.config.loader import parse_yaml, read_yaml, validate
from pipeline.config.params import Params, load_params
from pipeline.runtime.errors import UserError
from pipeline.runtime.files import write_atomic

logger = logging.getLogger(__name__)
PRESETS = Path("presets")


def available(folder: Path = PRESETS) -> list[str]:
    return sorted(path.stem for path in folder.glob("*.yaml"))


def _yaml():
    from ruamel.yaml import YAML

    parser = YAML()  # round trip: comments, key order and flow style stay as they are
    parser.preserve_quotes = True
    parser.width = 4096  # never rewrap a line: every line a preset does not change stays as it was
    return parser


def _read(path: Path) -> Any:
    from ruamel.yaml import YAMLError

    try:
        return _yaml().load(path.read_text(encoding="utf-8"))
    except YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}:{where} is not valid YAML; fix the syntax there") from None


def _merge(target: Any, changes: Any, prefix: str, log: list[tuple[str, Any, Any]]) -> None:
    """Set ``changes`` into ``target`` key by key (nested mappings merged, anything else
    replaced), recording (key, old, new) for each value that changes."""
    for key, value in changes.items():
        name = f"{prefix}{key}"
        if name.count(".") == 0 and key not in target:
            raise UserError(f"preset: {name!r} is no section of params.yaml; fix the preset")
        old = target.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            _merge(old, value, f"{name}.", log)
        elif old != value:
            target[key] = value
            log.append((name, old, value))


def read(preset: Path) -> dict[str, Any]:
    """A preset's sections (a one-line ``UserError`` for a missing, broken or empty one)."""
    if not preset.is_file():
        names = ", ".join(available(preset.parent)) or "none"
        raise UserError(f"{preset}: no such preset; presets here: {names}")
    read_yaml(preset)  # by params.yaml's rules first: no anchors, aliases or duplicate keys
    changes = _read(preset)  # then round trip, so the values keep their style
    if not isinstance(changes, dict) or not changes:
        raise UserError(f"{preset}: holds no params sections; write it as params.yaml's are")
    return changes


def apply(preset: Path, params_file: Path) -> list[tuple[str, Any, Any]]:
    """Write ``preset``'s values into ``params_file`` (validated first); returns the changes."""
    load_params(params_file)  # its own faults (an anchor, a bad key) are named as its own
    changes = read(preset)
    document = _read(params_file)
    log: list[tuple[str, Any, Any]] = []
    _merge(document, changes, "", log)
    text = io.StringIO()
    _yaml().dump(document, text)
    try:  # every key checked as the stages will check it, before anything is written
        validate(params_file, Params, parse_yaml(text.getvalue(), params_file))
    except UserError as err:
        raise UserError(f"{preset}: {str(err).split(': ', 1)[1]}") from None
    write_atomic(params_file, text.getvalue())  # a full disk: one line naming it, the old file whole
    return log


def _plain(value: Any) -> str:
    return str(list(value) if isinstance(value, list) else value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help=f"a preset of {PRESETS}/ (its file name without .yaml), "
                        "or a path to a preset file")


def run(args: argparse.Namespace) -> None:
    path = Path(args.name)
    preset = path if path.suffix in (".yaml", ".yml") else PRESETS / f"{args.name}.yaml"
    changes = apply(preset, args.params)
    for key, old, new in changes:
        logger.info("preset: %s: %s -> %s", key, _plain(old), _plain(new))
    logger.info("preset %s: %d value%s changed in %s%s", preset.stem, len(changes),
                "" if len(changes) == 1 else "s", args.params,
                "; dvc repro trains with them" if changes else " (it already had them)")
