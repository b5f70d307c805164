"""The rooms and their doors: layers point one way, no stage imports another, each stage's
``dvc.yaml`` deps are exactly the files it imports, and the package map names every module.

``python -m tests.unit.test_layers`` prints the package graph (``pipeline.room -> room``, and
``package -> package`` outside it) and every function over 50 lines (outside tests).
"""

from __future__ import annotations

import ast
import re
import sys
from collections import defaultdict
from pathlib import Path

import yaml

from testing.imports import OURS, REPO, direct_imports, imported_names, is_docstring_only, stage_module_deps

ALLOWED = {"pipeline": set(), "scraper": {"pipeline"}, "demo": {"pipeline"},
           "flows": {"pipeline"}, "testing": {"pipeline", "demo"},
           "bench": {"pipeline", "demo", "testing", "flows"}}  # never tests
# What pipeline/ may not import at all (DESIGN.md): the orchestrator, the versioning tool and
# the crawler stay behind their own layers.
FOREIGN_TO_PIPELINE = ("prefect", "dvc", "scrapy", "twisted")
# The rooms of pipeline/, lower first: each may import only from the rooms before it in its row.
ROOMS = {
    "runtime": set(),
    "contracts": {"runtime"},
    "config": {"runtime", "contracts"},
    "vision": {"runtime", "config", "contracts"},
    "ml": {"runtime", "config", "contracts", "vision"},
    "scrape": {"runtime", "config", "contracts"},
    "review": {"runtime", "config", "contracts"},
    "stages": {"runtime", "config", "contracts", "vision", "ml", "scrape"},
    "serving": {"runtime", "config", "contracts", "vision", "ml"},
    "tools": {"runtime", "config", "contracts", "vision", "ml", "review", "serving"},
    "cli": {"runtime"},
    "__main__": {"cli"},
}


def _files(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def _room(path: Path) -> str:
    parts = path.relative_to(REPO / "pipeline").parts
    return parts[0] if len(parts) > 1 else path.stem


def edges() -> dict[str, dict[str, list[str]]]:
    """package -> package -> the files of the first that import the second."""
    found: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for package in OURS:
        for path in _files(package):
            for name in imported_names(path):
                top = name.split(".")[0]
                if top in OURS and top != package:
                    found[package][top].append(str(path.relative_to(REPO)))
    return found


def room_edges() -> dict[str, dict[str, set[str]]]:
    """pipeline room -> room -> the files of the first that import a module of the second."""
    found: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for path in _files("pipeline"):
        for target in direct_imports(path):
            if target.name == "__init__.py" or REPO / "pipeline" not in target.parents:
                continue
            if _room(target) != _room(path):
                found[_room(path)][_room(target)].add(str(path.relative_to(REPO)))
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


def test_each_room_imports_only_the_rooms_below_it() -> None:
    for room, targets in room_edges().items():
        wrong = {t: sorted(files) for t, files in targets.items() if t not in ROOMS[room]}
        assert not wrong, f"pipeline/{room} must not import {wrong}"


def stage_imports() -> dict[str, list[str]]:
    """Each stage module -> the other stage or tool modules it imports (none, as it should be)."""
    stages, tools = REPO / "pipeline" / "stages", REPO / "pipeline" / "tools"
    return {str(path.relative_to(REPO)): sorted(
        str(t.relative_to(REPO)) for t in direct_imports(path)
        if t.name != "__init__.py" and t != path and (stages in t.parents or tools in t.parents))
        for path in _files("pipeline/stages")}


def test_no_stage_imports_another_stage_or_a_tool() -> None:
    wrong = {stage: others for stage, others in stage_imports().items() if others}
    assert not wrong, wrong


def test_each_stage_lists_exactly_the_files_it_imports() -> None:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert sorted(stages) == sorted(p.stem for p in _files("pipeline/stages") if p.stem != "__init__")
    for name, stage in stages.items():
        assert stage["cmd"] == f"python -m pipeline.stages.{name}"
        listed = sorted(d for d in stage["deps"] if d.startswith("pipeline/"))
        wanted = stage_module_deps(name)
        assert listed == wanted, (f"stage {name}: dvc.yaml lists {sorted(set(listed) - set(wanted))} "
                                  f"that it does not import and misses {sorted(set(wanted) - set(listed))}")


def test_packages_run_no_code_so_no_stage_needs_them() -> None:
    for path in _files("pipeline"):
        if path.name == "__init__.py":
            assert is_docstring_only(path), f"{path.relative_to(REPO)} holds code"


def package_map() -> dict[str, set[str]]:
    """The map in pipeline/__init__.py: room -> the module names its bullet lists."""
    text = ast.get_docstring(ast.parse((REPO / "pipeline" / "__init__.py").read_text())) or ""
    rooms: dict[str, set[str]] = {}
    for bullet in text.split("\n- ")[1:]:
        names = re.findall(r"``([a-z_]+)/?``", bullet)
        rooms[names[0]] = set(names[1:]) | ({names[0]} if not bullet.startswith(f"``{names[0]}/") else set())
    return rooms


def test_the_package_map_names_every_module_in_its_room() -> None:
    rooms = package_map()
    for path in _files("pipeline"):
        if path.name in ("__init__.py", "__main__.py"):
            continue
        room = _room(path)
        assert room in rooms, f"pipeline/__init__.py has no bullet for {room}"
        assert path.stem in rooms[room], (
            f"pipeline/__init__.py's {room} bullet does not name {path.relative_to(REPO)}")
    assert set(rooms) == set(ROOMS) - {"__main__"}


def test_each_room_may_import_only_rooms_above_it_in_the_map() -> None:
    """The map's order and ROOMS agree: what a room may import is listed above it."""
    order = list(package_map())
    for room, allowed in ROOMS.items():
        if room in order:
            above = set(order[:order.index(room)])
            assert allowed <= above, f"pipeline/{room} may import {sorted(allowed - above)}, " \
                                     "which the map in pipeline/__init__.py lists below it"


def test_pipeline_imports_no_orchestrator_versioning_or_crawler() -> None:
    for path in _files("pipeline"):
        bad = sorted(n for n in imported_names(path) if n.split(".")[0] in FOREIGN_TO_PIPELINE)
        assert not bad, f"{path.relative_to(REPO)} imports {bad}"


WRITES = {"write_text", "write_bytes", "write_atomic", "dump", "open", "replace", "copyfile",
          "copy", "copy2", "link", "rename"}


def meta_writers() -> list[str]:
    """file:function of every call that writes a file and names ``meta.json`` (the literal or
    the contract's ``META``) in its arguments or its receiver."""
    found = []
    for package in OURS:
        if package == "tests":
            continue
        for path in _files(package):
            tree = ast.parse(path.read_text())
            for function in ast.walk(tree):
                if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                for call in ast.walk(function):
                    if not (isinstance(call, ast.Call) and getattr(call.func, "attr", getattr(
                            call.func, "id", None)) in WRITES):
                        continue
                    names = {n.value for n in ast.walk(call) if isinstance(n, ast.Constant)} | {
                        getattr(n, "attr", getattr(n, "id", None)) for n in ast.walk(call)}
                    if any(isinstance(n, str) and "meta.json" in n for n in names) or "META" in names:
                        found.append(f"{path.relative_to(REPO)}:{function.name}")
    return sorted(set(found))


def test_only_the_records_contract_writes_meta_json() -> None:
    """tfrecords, pretrain, crossval's folds and a trial's view all write it through
    pipeline.contracts.features.write_meta, so a format change is one edit."""
    assert meta_writers() == ["pipeline/contracts/features.py:write_meta"]


def test_no_function_is_over_50_lines_outside_tests() -> None:
    assert not long_functions(), long_functions()


if __name__ == "__main__":
    for package, targets in sorted(edges().items()):
        for target, files in sorted(targets.items()):
            sys.stdout.write(f"{package} -> {target}  ({len(files)} files)\n")
    for room, targets in sorted(room_edges().items()):
        for target, files in sorted(targets.items()):
            sys.stdout.write(f"pipeline.{room} -> {target}  ({len(files)} files)\n")
    stage_edges = sum(len(others) for others in stage_imports().values())
    sys.stdout.write(f"stage -> stage (or tool) imports: {stage_edges}\n")
    rows = long_functions()
    sys.stdout.write(f"functions over 50 lines outside tests: {len(rows)}\n")
    for length, name in rows:
        sys.stdout.write(f"  {length} {name}\n")
