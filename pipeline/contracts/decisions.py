"""Review decisions as data: ``data/review/decisions.jsonl``, append-only, git-tracked, a dep of clean.

One JSON line per action a person took on one image (``happysad review``, or a
Label Studio export imported as decisions): ``sha256``, ``action`` (``keep``,
``relabel``, ``exclude`` or ``undo``), ``label`` (the class it belongs to after
the action), ``time`` (UTC, ISO 8601) and an optional ``note``. Replaying the
file in order gives each image's standing decision: the latest action wins, and
``undo`` takes back that image's latest action still standing (so a second undo
takes back the one before). ``clean`` applies what stands: excluded images are
rejected as ``excluded_in_review``, relabelled ones move to their new class.
"""

from __future__ import annotations

import datetime
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.runtime.errors import UserError
from pipeline.runtime.files import append_lines

logger = logging.getLogger(__name__)
ACTIONS = ("keep", "relabel", "exclude", "undo")
DEFAULT_PATH = Path("data/review/decisions.jsonl")


@dataclass(frozen=True)
class Decision:
    sha256: str
    action: str
    label: str
    time: str
    note: str = ""


def is_sha256(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _parse(line: str, where: str) -> Decision:
    try:
        data = json.loads(line)
        decision = Decision(sha256=str(data["sha256"]), action=str(data["action"]),
                            label=str(data.get("label") or ""), time=str(data.get("time") or ""),
                            note=str(data.get("note") or ""))
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"{where}: not a review decision ({err}); fix or remove the line") from None
    if decision.action not in ACTIONS:
        raise UserError(f"{where}: action {decision.action!r} is not one of {', '.join(ACTIONS)}; "
                        "fix or remove the line")
    if not is_sha256(decision.sha256):
        raise UserError(f"{where}: {decision.sha256!r} is not a sha256; fix or remove the line")
    if decision.action == "relabel" and not decision.label:
        raise UserError(f"{where}: a relabel needs the new label; fix or remove the line")
    return decision


def read(path: Path) -> list[Decision]:
    """Every decision in file order; none when the file does not exist. A last line cut short
    (no newline, not a whole decision: what a write killed half-way leaves) is left out with a
    warning; the next :func:`append` drops it."""
    if not path.exists():
        return []
    out = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                out.append(_parse(line, f"{path}:{number}"))
            except UserError:
                if line.endswith("\n"):
                    raise
                logger.warning("%s:%d: the last line was cut short (a write was interrupted); "
                               "left out, and dropped by the next decision saved", path, number)
    return out


def standing(decisions: list[Decision]) -> dict[str, Decision]:
    """Each image's decision that stands after replaying ``decisions`` in order."""
    stacks: dict[str, list[Decision]] = {}
    for decision in decisions:
        stack = stacks.setdefault(decision.sha256, [])
        if decision.action == "undo":
            if stack:
                stack.pop()
        else:
            stack.append(decision)
    return {sha: stack[-1] for sha, stack in stacks.items() if stack}


def append(path: Path, decisions: list[Decision]) -> None:
    """Add ``decisions`` to the file in one write, flushed to disk: nothing is lost on a crash,
    and a line a crash cut short is dropped first, so the new ones never glue onto it."""
    append_lines(path, [json.dumps({k: v for k, v in asdict(d).items() if v or k != "note"},
                                   sort_keys=True) for d in decisions])
