"""The command line: every command module is in the table, each answers --help with its own
description, stages also run as ``python -m pipeline.stages.<stage>`` as dvc.yaml runs them."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest
import yaml

from pipeline.cli import COMMANDS, module_path, summary
from testing.project import REPO


def _commands_in_the_code() -> set[str]:
    """Every module under pipeline/ with ``add_arguments`` and ``run``: a command."""
    found = set()
    for path in (REPO / "pipeline").rglob("*.py"):
        defined = {n.name for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef)}
        if {"run", "add_arguments"} <= defined:
            found.add(".".join(path.relative_to(REPO / "pipeline").with_suffix("").parts))
    return found


def test_the_command_table_names_every_command_module_and_only_those() -> None:
    assert set(COMMANDS.values()) == _commands_in_the_code()
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert list(COMMANDS)[:len(stages)] == list(stages)  # the stages first, in DAG order
    assert all(COMMANDS[s] == f"stages.{s}" for s in stages)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_each_command_answers_help_with_its_own_description(command: str) -> None:
    result = subprocess.run([sys.executable, "-m", "pipeline", command, "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: happysad {command} ")
    described = " ".join(result.stdout.split("\n\n")[1].split())  # argparse wraps it
    assert described == summary(command) and len(described.split()) > 3
    assert "--params" in result.stdout


@pytest.mark.parametrize("stage", [c for c, m in COMMANDS.items() if m.startswith("stages.")])
def test_a_stage_runs_as_its_own_module_as_dvc_yaml_runs_it(stage: str) -> None:
    result = subprocess.run([sys.executable, "-m", f"pipeline.stages.{stage}", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: happysad {stage} ")
    first_line = ast.get_docstring(ast.parse(module_path(stage).read_text())).splitlines()[0]
    assert " ".join(result.stdout.split("\n\n")[1].split()) == first_line


def test_happysad_help_lists_every_command_in_plain_words() -> None:
    result = subprocess.run([sys.executable, "-m", "pipeline", "--help"], cwd=REPO,
                            capture_output=True, text=True, check=True)
    assert "``" not in result.stdout
    for command in COMMANDS:
        line = next(line for line in result.stdout.splitlines() if line.strip().startswith(command))
        assert len(line.split()) > 3, f"{command} has no description: {line!r}"
    version = subprocess.run([sys.executable, "-m", "pipeline", "--version"], cwd=REPO,
                             capture_output=True, text=True, check=True)
    assert version.stdout.startswith("happysad ")
