"""Layers point one way: flows, scraper and demo use pipeline; pipeline uses none of them.

``python -m tests.test_layers`` prints the package edges (``package -> package``) and
every function over 50 lines (outside tests), as the closing notes quote them.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OURS = ("pipeline", "scraper", "demo", "flows", "bench", "tests")
ALLOWED = {"pipeline": set(), "scraper": {"pipeline"}, "demo": {"pipeline"},
           "flows": {"pipeline"}}
# What pipeline/ may not import at all (DESIGN.md): the orchestrator, the versioning tool and
# the crawler stay behind their own layers.
FOREIGN_TO_PIPELINE = ("prefect", "dvc", "scrapy", "twisted")


def _files(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports by absolute name, anywhere in the file."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def edges() -> dict[str, dict[str, list[str]]]:
    """package -> package -> the files of the first that import the second."""
    found: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for package in OURS:
        for path in _files(package):
            for name in imports(path):
                top = name.split(".")[0]
                if top in OURS and top != package:
                    found[package][top].append(str(path.relative_to(REPO)))
    return found


def long_functions(limit: int = 50) -> list[tuple[int, str]]:
    rows = []
    for package in OURS:
        if package == "tests":
            continue
        for path in _files(package):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    length = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                    if length > limit:
                        rows.append((length, f"{path.relative_to(REPO)}:{node.name}"))
    return sorted(rows, reverse=True)


def test_layers_point_one_way() -> None:
    graph = edges()
    for package, allowed in ALLOWED.items():
        wrong = {target: files for target, files in graph[package].items() if target not in allowed}
        assert not wrong, f"{package} must not import {wrong}"


def test_pipeline_imports_no_orchestrator_versioning_or_crawler() -> None:
    for path in _files("pipeline"):
        bad = sorted(n for n in imports(path) if n.split(".")[0] in FOREIGN_TO_PIPELINE)
        assert not bad, f"{path.relative_to(REPO)} imports {bad}"


def test_no_function_is_over_50_lines_outside_tests() -> None:
    assert not long_functions(), long_functions()


if __name__ == "__main__":
    for package, targets in sorted(edges().items()):
        for target, files in sorted(targets.items()):
            sys.stdout.write(f"{package} -> {target}  ({len(files)} files)\n")
    rows = long_functions()
    sys.stdout.write(f"functions over 50 lines outside tests: {len(rows)}\n")
    for length, name in rows:
        sys.stdout.write(f"  {length} {name}\n")
