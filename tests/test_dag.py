"""dvc.yaml: every stage lists what it imports, and `dvc repro` really runs and caches it."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, TINY_SITE
from tests.project import copy_project, tiny_params, tool_env

LOCAL_PACKAGES = ("pipeline", "scraper", "demo", "flows")


def _module_file(name: str) -> Path | None:
    base = REPO.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def local_imports(path: Path, seen: set[Path] | None = None,
                  skip: frozenset[Path] = frozenset()) -> set[Path]:
    """Every project file that ``path`` imports, directly or not, including itself,
    without entering the files in ``skip``."""
    seen = set() if seen is None else seen
    if path in seen or path in skip:
        return seen
    seen.add(path)
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            if name.split(".")[0] in LOCAL_PACKAGES:
                found = _module_file(name)
                if found:
                    local_imports(found, seen, skip)
    return seen


def test_each_stage_lists_the_modules_it_imports() -> None:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        assert stage["cmd"] == f"python -m pipeline {name}"
        deps = [REPO / d for d in stage["deps"]]
        stage_module = REPO / "pipeline" / f"{name}.py"
        # The CLI imports every stage lazily; a stage answers only for its own imports.
        others = frozenset(REPO / "pipeline" / f"{s}.py" for s in stages if s != name)
        used = local_imports(stage_module, skip=others) | local_imports(
            REPO / "pipeline" / "cli.py", skip=others)
        for module in used:
            body = ast.parse(module.read_text()).body
            if module.name == "__init__.py" and len(body) == 1 and isinstance(body[0], ast.Expr):
                continue  # a package marker holding only its docstring
            assert any(module == d or d in module.parents for d in deps), (
                f"stage {name} imports {module.relative_to(REPO)} but dvc.yaml does not list it")


def test_dvc_repro_runs_the_dag_then_is_a_no_op(tmp_path: Path) -> None:
    params = yaml.safe_load(tiny_params(TINY_SITE))
    params["crossval"]["folds"] = 2  # the stage's real path, through DVC (off by default)
    project = copy_project(tmp_path / "project", yaml.safe_dump(params, sort_keys=False))
    env = tool_env()

    def repro() -> str:
        result = subprocess.run(["dvc", "repro"], cwd=project, env=env, capture_output=True,
                                text=True, timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    first = repro()
    for stage in yaml.safe_load((project / "dvc.yaml").read_text())["stages"]:
        assert f"Running stage '{stage}'" in first
    manifest = project / "data" / "raw" / "manifest.jsonl"
    assert len(manifest.read_text().splitlines()) > 2 * TINY_SITE.images_per_class
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    card = json.loads((project / "models" / "model_card.json").read_text())
    records = next(o for o in lock["stages"]["tfrecords"]["outs"] if o["path"] == "data/tfrecords")
    assert card["data_version"]["md5"] == records["md5"]  # the card names the data it was trained on
    metrics = json.loads((project / "reports" / "evaluate" / "metrics.json").read_text())
    assert metrics["images"] == card["metrics"]["images"] > 0
    assert (project / "models" / "serving" / "saved_model.pb").exists()
    split = [json.loads(line) for line in (project / "data" / "split" / "split.jsonl").open()]
    oof = (project / "reports" / "crossval" / "oof.csv").read_text().splitlines()
    assert oof[0] == "sha256,label,probability,fold"
    assert sorted(row.split(",")[0] for row in oof[1:]) == sorted(
        r["sha256"] for r in split if r["split"] != "test")
    assert not any((project / "models" / ".crossval").iterdir())  # finished: nothing kept
    second = repro()
    assert "Running stage" not in second and "didn't change, skipping" in second
    _check_dvc_views(project, env)
    lock = (project / "dvc.lock").read_text()
    # Forcing the data stages after the crawl (the model's .keras zip carries a save time; the
    # crawl's own reproducibility is test_scrape's) changes nothing.
    forced = subprocess.run(["dvc", "repro", "-f", "-s", "clean", "split", "tfrecords"], cwd=project,
                            env=env, capture_output=True, text=True, timeout=600)
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert (project / "dvc.lock").read_text() == lock  # bit-identical outputs


@pytest.mark.parametrize("stage", ["scrape", "clean", "split", "tfrecords", "train", "crossval", "evaluate",
                                   "save", "predict", "promote"])
def test_stage_cli_help_runs(stage: str) -> None:
    result = subprocess.run([sys.executable, "-m", "pipeline", stage, "--help"], cwd=REPO,
                            capture_output=True, text=True, check=True)
    assert stage in result.stdout


def _check_dvc_views(project: Path, env: dict[str, str]) -> None:
    """`dvc metrics show` is a readable table of headline numbers; `dvc plots show` draws each
    plot once and nothing that dvc.yaml's plots section does not name."""
    shown = subprocess.run(["dvc", "metrics", "show"], cwd=project, env=env, capture_output=True,
                           text=True, check=True).stdout
    assert max(len(line) for line in shown.splitlines()) <= 160, shown
    header = shown.splitlines()[0].split()
    assert {"accuracy", "precision", "recall", "f1", "roc_auc", "loss", "train_val_gap", "kept",
            "rejected"} <= set(header) and len(header) <= 12
    plots = json.loads(subprocess.run(["dvc", "plots", "show", "--json"], cwd=project, env=env,
                                      capture_output=True, text=True, check=True).stdout)
    names = list(plots["data"])
    assert len(names) == len(set(names))
    pictures = [n for n in names if n.endswith(".png")]
    assert sorted(Path(n).name for n in pictures) == sorted(
        p.name for p in (project / "reports" / "evaluate" / "plots").glob("*.png"))
    drawn = [n for n in names if not n.endswith(".png")]
    defined = [next(iter(d)) for d in yaml.safe_load((project / "dvc.yaml").read_text())["plots"]
               if isinstance(d, dict)]
    assert sorted(drawn) == sorted(defined)  # no default plot of a stage-level file


def test_the_command_table_names_every_command_module_and_only_those() -> None:
    from pipeline.cli import COMMANDS

    modules = {p.stem for p in (REPO / "pipeline").glob("*.py")
               if {"run", "add_arguments"} <= {n.name for n in ast.parse(p.read_text()).body
                                                if isinstance(n, ast.FunctionDef)}}
    assert set(COMMANDS.values()) == modules
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert list(COMMANDS)[:len(stages)] == list(stages)  # the stages first, in DAG order


def test_happysad_help_lists_every_command_in_plain_words() -> None:
    from pipeline.cli import available_stages

    result = subprocess.run([sys.executable, "-m", "pipeline", "--help"], cwd=REPO,
                            capture_output=True, text=True, check=True)
    assert "``" not in result.stdout
    for stage in available_stages():
        line = next(line for line in result.stdout.splitlines() if line.strip().startswith(stage))
        assert len(line.split()) > 3, f"{stage} has no description: {line!r}"
    version = subprocess.run([sys.executable, "-m", "pipeline", "--version"], cwd=REPO,
                             capture_output=True, text=True, check=True)
    assert version.stdout.startswith("happysad ")
