"""``happysad preset``: a preset's values land in params.yaml, and nothing else changes."""

from __future__ import annotations

import difflib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config.params import load_params
from pipeline.runtime.errors import UserError
from pipeline.tools.preset import apply, available
from testing.project import REPO


@pytest.fixture()
def params_copy(tmp_path: Path) -> Path:
    return Path(shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml"))


def test_a_preset_sets_its_keys_and_keeps_the_rest_and_the_comments(params_copy: Path,
                                                                   tmp_path: Path) -> None:
    before = load_params(params_copy)
    preset = tmp_path / "mine.yaml"
    preset.write_text("# mine\ntfrecords:\n  crop: face\ntrain:\n  first_stride: 1\n"
                      "  filters: [8, 16]\n  augment:\n    zoom: 0.2\n")
    changes = apply(preset, params_copy)
    after = load_params(params_copy)
    assert {key for key, _, _ in changes} == {"tfrecords.crop", "train.first_stride",
                                              "train.filters", "train.augment.zoom"}
    assert (after.tfrecords.crop, after.train.first_stride, after.train.filters,
            after.train.augment.zoom) == ("face", 1, [8, 16], 0.2)
    assert after.train.augment.rotation == before.train.augment.rotation  # merged, not replaced
    assert after.model_copy(update={"tfrecords": before.tfrecords, "train": before.train}) == before
    assert after.train.model_copy(update={"first_stride": 2, "filters": before.train.filters,
                                          "augment": before.train.augment}) == before.train
    text = params_copy.read_text()
    original = (REPO / "params.yaml").read_text()
    kept = [line for line in original.splitlines() if line.strip().startswith("#")]
    assert all(line in text for line in kept)  # every comment line is still there
    changed = [line for line in difflib.ndiff(original.splitlines(), text.splitlines())
               if line.startswith("- ")]
    assert len(changed) == 4, changed  # the four keys' lines; no long line rewrapped
    assert apply(preset, params_copy) == []  # a second time: nothing to change


def test_a_bad_preset_changes_nothing_and_says_which_key(params_copy: Path, tmp_path: Path) -> None:
    original = params_copy.read_text()
    preset = tmp_path / "bad.yaml"
    preset.write_text("train:\n  first_stride: 0\n")
    with pytest.raises(UserError, match=r"bad.yaml: train.first_stride"):
        apply(preset, params_copy)
    preset.write_text("trian:\n  dropout: 0.2\n")
    with pytest.raises(UserError, match="'trian' is no section"):
        apply(preset, params_copy)
    with pytest.raises(UserError, match="no such preset; presets here: .*faces"):
        apply(REPO / "presets" / "nope.yaml", params_copy)
    assert params_copy.read_text() == original
    assert not list(params_copy.parent.glob(".*preset"))


def test_anchors_are_blamed_on_the_file_that_has_them(params_copy: Path, tmp_path: Path) -> None:
    """An anchor in params.yaml is params.yaml's fault, not the preset's; a recursive alias in a
    preset is refused, not written out as null. (Before: the preset was blamed, and a
    recursive alias in tune.space became `null` with exit 0.)"""
    preset = tmp_path / "mine.yaml"
    preset.write_text("train:\n  dropout: 0.2\n")
    original = params_copy.read_text()
    params_copy.write_text(original.replace("\ntrain:\n", "\ntrain: &t\n", 1))
    with pytest.raises(UserError, match=r"^[^:]*params.yaml: line \d+: YAML anchor &t is not allowed"):
        apply(preset, params_copy)
    params_copy.write_text(original)
    preset.write_text("tune:\n  space: &s\n    loop: *s\n")
    with pytest.raises(UserError, match=r"mine.yaml: line \d+: YAML (anchor|alias)"):
        apply(preset, params_copy)
    assert params_copy.read_text() == original


def test_the_shipped_presets_apply_to_the_repository_params(params_copy: Path) -> None:
    assert "faces" in available(REPO / "presets")
    for name in available(REPO / "presets"):
        assert apply(REPO / "presets" / f"{name}.yaml", Path(shutil.copy(
            REPO / "params.yaml", params_copy))), name


def test_the_preset_command_logs_each_change_and_fails_in_one_line(params_copy: Path) -> None:
    command = [sys.executable, "-m", "pipeline", "--params", str(params_copy), "preset"]
    done = subprocess.run([*command, "faces"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "preset: train." in done.stderr and "dvc repro trains with them" in done.stderr
    assert load_params(params_copy).tfrecords.crop == "face"
    failed = subprocess.run([*command, "nope"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert failed.returncode != 0 and "no such preset" in failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1 and "Traceback" not in failed.stderr
