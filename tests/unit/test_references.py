"""Every pointer a reader follows exists: a file path (``pipeline/…``, ``docs/…``,
``bench/…``…), a dotted module (``pipeline.ml.fit``) and a quoted section of README or a
docs page (``docs/operations.md, "Sharing with a second machine"``), named anywhere in code,
docs, params or the Makefile. Moving a file or renaming a heading without its pointers fails
here, not in a user's hands."""

from __future__ import annotations

import re
from pathlib import Path

from testing.project import REPO

SUFFIXES = (".py", ".md", ".yaml", ".yml", ".toml", ".html")
SKIP_TOP = ("data", "models", "reports", "engines", "node_modules")
# bench/deps.py measures the move to rooms: it names the files as they were before it; this
# file's patterns would match themselves
HISTORICAL = {"bench/deps.py", "tests/unit/test_references.py"}
PATH = re.compile(r"(?<![\w/.-])((?:pipeline|flows|docs|bench|presets|scraper|demo|testing|tests)"
                  r"/[\w/.-]*\.(?:py|md|yaml|html|json))")
DOTTED = re.compile(r"(?<![\w./-])((?:pipeline|flows|bench|scraper|demo|testing)\.(?:[a-z_]+\.)*"
                    r"[a-z_]+)\b")
SECTION = re.compile(r"(README(?:\.md)?|docs/[\w-]+\.md)(?:'s|,|:)?[ \t]*(?:section[ \t]*)?"
                     r"[\"'“]([^\"'”\n]+)[\"'”]")


def _files() -> list[Path]:
    found = []
    for path in REPO.rglob("*"):
        parts = path.relative_to(REPO).parts
        if (path.is_file() and (path.suffix in SUFFIXES or path.name == "Makefile")
                and not any(p.startswith(".") for p in parts) and parts[0] not in SKIP_TOP
                and str(path.relative_to(REPO)) not in HISTORICAL):
            found.append(path)
    return sorted(found)


def _headings(path: Path) -> set[str]:
    return {re.sub(r"^#+\s*", "", line).strip() for line in path.read_text().splitlines()
            if line.startswith("#")}


def _is_module(name: str) -> bool:
    parts = name.split(".")
    for length in range(len(parts), 0, -1):  # a module, or an attribute of one
        base = REPO.joinpath(*parts[:length])
        if base.with_suffix(".py").exists() or (base / "__init__.py").exists():
            return True
    return False


def broken_pointers() -> list[str]:
    broken = []
    for path in _files():
        text, where = path.read_text(errors="ignore"), path.relative_to(REPO)
        for match in PATH.finditer(text):
            name = match.group(1)
            if "NAME" not in name and not (REPO / name).exists():
                broken.append(f"{where}: no file {name}")
        for match in DOTTED.finditer(text):
            if not _is_module(match.group(1)):
                broken.append(f"{where}: no module {match.group(1)}")
        for match in SECTION.finditer(text):
            page = REPO / ("README.md" if match.group(1).startswith("README") else match.group(1))
            if page.exists() and match.group(2).strip() not in _headings(page):
                broken.append(f"{where}: {match.group(1)} has no section \"{match.group(2)}\"")
    return sorted(set(broken))


def test_every_file_module_and_section_named_exists() -> None:
    broken = broken_pointers()
    assert not broken, "\n".join(broken)
