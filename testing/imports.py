"""The import graph of this repository's own modules, read from the source (nothing imported):
which files a module imports, followed transitively, and which ``dvc.yaml`` stage depends on
which files."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OURS = ("pipeline", "scraper", "demo", "flows", "bench", "tests", "testing")


def module_file(name: str, root: Path = REPO) -> Path | None:
    """The file of dotted module ``name`` under ``root`` (a module or a package's
    ``__init__.py``), or None when it is not one of ours."""
    base = root / name.replace(".", "/")
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _runs(tree: ast.AST) -> list[ast.AST]:
    """Every node of ``tree`` but those under ``if TYPE_CHECKING:``, which never run."""
    found, todo = [], [tree]
    while todo:
        node = todo.pop()
        found.append(node)
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING",
                                                                   "typing.TYPE_CHECKING"):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return found


def imported_names(path: Path) -> set[str]:
    """Every module ``path`` imports by absolute name, anywhere in the file (also inside
    functions) but under ``if TYPE_CHECKING:``; ``from package import module`` counts as
    importing that module."""
    names: set[str] = set()
    for node in _runs(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _package_inits(path: Path, root: Path) -> list[Path]:
    """The ``__init__.py`` files Python runs before ``path``'s module."""
    inits, folder = [], path.parent
    while folder != root and (folder / "__init__.py").is_file():
        inits.append(folder / "__init__.py")
        folder = folder.parent
    return [p for p in inits if p != path]


@cache
def direct_imports(path: Path, root: Path = REPO) -> frozenset[Path]:
    """The files of our modules that ``path`` imports, and the packages' ``__init__.py``
    files that run on the way."""
    found: set[Path] = set()
    for name in imported_names(path):
        if name.split(".")[0] not in OURS:
            continue
        target = module_file(name, root)
        if target is not None:
            found.add(target)
            found.update(_package_inits(target, root))
    return frozenset(found - {path})


def closure(paths: list[Path], root: Path = REPO) -> set[Path]:
    """``paths`` and every file of ours they import, transitively."""
    seen: set[Path] = set()
    todo = list(paths)
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        if path.suffix == ".py":
            todo.extend(direct_imports(path, root))
    return seen


def is_docstring_only(path: Path) -> bool:
    """Whether a file holds nothing but a docstring (a package map): no code runs from it."""
    body = ast.parse(path.read_text(encoding="utf-8")).body
    return all(isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
               for node in body)


def stage_code(stage: str, root: Path = REPO) -> set[Path]:
    """The files of ours stage ``stage``'s command runs: its module and what it imports; for
    scrape also the crawler and the demo site it starts as child processes (``scraper/``,
    ``demo/``). Packages' docstring-only ``__init__.py`` files run no code and are left out."""
    start = [root / "pipeline" / "stages" / f"{stage}.py"]
    if stage == "scrape":
        start += sorted((root / "scraper").rglob("*.py")) + sorted((root / "demo").rglob("*.py"))
    return {p for p in closure(start, root) if not (p.name == "__init__.py" and is_docstring_only(p))}


def stage_module_deps(stage: str, root: Path = REPO) -> list[str]:
    """The ``pipeline/`` files stage ``stage`` imports, as ``dvc.yaml`` lists them."""
    return sorted(str(p.relative_to(root)) for p in stage_code(stage, root)
                  if p.relative_to(root).parts[0] == "pipeline")
