"""The pretrain stage: a face set in FER-2013's layout becomes the face network a photo model
warms from; no face set is a note and no model; train.init_from: pretrain starts from it."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.config.params import Params
from pipeline.config.pretrain import PretrainParams
from pipeline.config.train import TrainParams
from pipeline.runtime.errors import UserError
from testing.project import REPO, params_file

CLASSES = ["happy", "sad"]


def _params(repo_params: Params, tiny_train_params: TrainParams) -> PretrainParams:
    return repo_params.pretrain.model_copy(update={
        "image_size": 32, "fractions": {"train": 0.6, "val": 0.2, "test": 0.2}, "workers": 1,
        "train": tiny_train_params})


def _face_set(folder: Path, per_class: int = 16) -> None:
    """FER-2013's layout: train/ and validation/ folders per expression, an expression that is
    not a class, a file that is no image, one too small, and a copy under another name."""
    from demo.faces import FaceStyle, draw_face

    rng = np.random.default_rng(3)
    for label in CLASSES:
        for n in range(per_class):
            part = "train" if n % 4 else "validation"
            (folder / part / label).mkdir(parents=True, exist_ok=True)
            draw_face(rng, label, FaceStyle(min_side=48, max_side=56)).save(
                folder / part / label / f"{n}.jpg", quality=90)
    (folder / "train" / "angry").mkdir()
    draw_face(rng, "happy").save(folder / "train" / "angry" / "0.jpg")  # not a class: left alone
    (folder / "train" / "happy" / "notes.jpg").write_text("not an image")
    draw_face(rng, "sad").resize((16, 16)).save(folder / "train" / "sad" / "tiny.png")
    (folder / "train" / "sad" / "copy.jpg").write_bytes((folder / "train" / "sad" / "1.jpg").read_bytes())


def test_no_face_set_is_a_note_and_no_model(repo_params: Params, tiny_train_params: TrainParams,
                                            tmp_path: Path) -> None:
    from pipeline.stages.pretrain import pretrain

    (tmp_path / "faces").mkdir()
    metrics = pretrain(tmp_path / "faces", CLASSES, tmp_path / "models" / "pretrain",
                       tmp_path / "reports", _params(repo_params, tiny_train_params),
                       repo_params.evaluate, seed=1)
    assert metrics == {"images": 0}
    assert [p.name for p in (tmp_path / "models" / "pretrain").iterdir()] == ["README.txt"]
    assert json.loads((tmp_path / "reports" / "metrics.json").read_text()) == {"images": 0}


def test_a_face_set_trains_the_face_network_and_train_warms_from_it(
        repo_params: Params, tiny_train_params: TrainParams, tiny_records: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from pipeline.ml.fit import train
    from pipeline.stages.pretrain import pretrain

    _face_set(tmp_path / "faces")
    models = tmp_path / "models" / "pretrain"
    metrics = pretrain(tmp_path / "faces", CLASSES, models, tmp_path / "reports",
                       _params(repo_params, tiny_train_params), repo_params.evaluate, seed=1)
    counts = metrics["counts"]
    # 32 faces, the copy once; the file that is no image and the tiny one left out and counted
    assert sum(sum(c.values()) for c in counts.values()) == 32
    assert metrics["left_out"] == {"corrupt": 1, "too_small": 1}
    assert metrics["images"] == sum(counts["test"].values()) > 0
    assert 0 <= metrics["accuracy_interval"]["low"] <= metrics["accuracy"] <= 1
    assert json.loads((models / "input.json").read_text())["image_size"] == 32
    assert not (tmp_path / "models" / ".pretrain").exists()  # its records are gone

    monkeypatch.chdir(tmp_path)  # train.init_from: pretrain names models/pretrain/model.keras
    warm = tiny_train_params.model_copy(update={"init_from": "pretrain", "epochs": 1})
    with caplog.at_level(logging.INFO, logger="pipeline.ml"):
        train(tiny_records, tmp_path / "photo" / "train", tmp_path / "photo-reports", warm, seed=5)
    taken = next(r.getMessage() for r in caplog.records if "layers start from" in r.getMessage())
    assert int(taken.split()[1]) > 0 and "models/pretrain/model.keras" in taken


def test_copies_share_a_split_and_the_shares_follow_the_fractions() -> None:
    from pipeline.contracts.split import split_of as assign

    fractions = {"train": 0.8, "val": 0.1, "test": 0.1}
    splits = [assign(f"{n:016x}", fractions, seed=7) for n in range(4000)]
    assert all(assign(f"{n:016x}", fractions, seed=7) == s for n, s in enumerate(splits[:50]))
    assert abs(splits.count("test") / 4000 - 0.1) < 0.02
    assert splits != [assign(f"{n:016x}", fractions, seed=8) for n in range(4000)]


def test_init_from_pretrain_without_a_face_network_is_one_line(tiny_train_params: TrainParams,
                                                               tiny_records: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.ml.fit import train

    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"^train.init_from: models/pretrain/model.keras: the "
                                        r"pretrain stage trained no face network"):
        train(tiny_records, tmp_path / "m", tmp_path / "r",
              tiny_train_params.model_copy(update={"init_from": "pretrain"}), seed=5)


def test_a_path_in_init_from_is_named_as_untracked_by_dvc(tiny_train_params: TrainParams,
                                                        tiny_records: Path, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """`pretrain` is a dvc.yaml dep of train; a path is not, and the train stage says so."""
    import argparse

    from pipeline.stages import train

    settings = params_file(tmp_path / "params.yaml", train={
        **tiny_train_params.model_dump(mode="json"), "init_from": "gone.keras"})
    args = argparse.Namespace(params=settings, records=tiny_records,
                              models=tmp_path / "m", reports=tmp_path / "r")
    with caplog.at_level(logging.WARNING), pytest.raises(UserError, match="gone.keras: no such file"):
        train.run(args)
    assert "train.init_from gone.keras is read but not tracked by DVC" in caplog.text
    assert "dvc repro -f -s train" in caplog.text


def test_the_stage_says_there_is_nothing_to_pretrain_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "faces").mkdir()
    result = subprocess.run([sys.executable, "-m", "pipeline.stages.pretrain", "--params",
                             str(REPO / "params.yaml"), "--faces", "faces", "--models", "m",
                             "--reports", "r"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "pretrain:" in line]
    assert len(lines) == 1 and "No face set in faces" in lines[0] and "nothing to pretrain" in lines[0]


@pytest.mark.slow  # a subprocess that imports TensorFlow and trains (~30 s): CI runs it
def test_the_stage_keeps_tensorflow_native_notices_out_of_what_a_user_reads(
        repo_params: Params, tiny_train_params: TrainParams, tmp_path: Path) -> None:
    _face_set(tmp_path / "faces")
    params_file(tmp_path / "params.yaml",
                pretrain=_params(repo_params, tiny_train_params).model_dump(mode="json"))
    result = subprocess.run([sys.executable, "-m", "pipeline.stages.pretrain", "--params",
                             "params.yaml", "--faces", "faces", "--models", "m", "--reports", "r"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600,
                            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "m" / "model.keras").is_file()
    # TensorFlow's start-up lines ("oneDNN custom operations are on", absl's) go to the debug log
    assert "oneDNN" not in result.stderr and "absl" not in result.stderr, result.stderr


def test_the_face_set_is_read_by_data_imports_rules(tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """Regular files inside data/pretrain only: links out (to a face elsewhere, to
    /etc/hostname, to a folder of faces) are refused and named; a link inside is read. What
    DVC cannot hash (a FIFO, a name that is not UTF-8, a dangling link) is one line. (Before:
    a linked outside face was trained on, /etc/hostname read, a linked folder ignored with
    "nothing to pretrain", and a FIFO hung `dvc repro pretrain`.)"""
    import os

    from pipeline.stages.pretrain import face_files

    faces, outside = tmp_path / "faces", tmp_path / "elsewhere"
    _face_set(faces, per_class=4)
    (outside / "sad").mkdir(parents=True)
    (outside / "sad" / "far.jpg").write_bytes((faces / "train" / "sad" / "1.jpg").read_bytes())
    happy = faces / "train" / "happy"
    (happy / "far.jpg").symlink_to(outside / "sad" / "far.jpg")
    (happy / "host.jpg").symlink_to("/etc/hostname")
    (happy / "near.jpg").symlink_to(happy / "1.jpg")  # inside: fine
    (faces / "more").mkdir()
    (faces / "more" / "sad").symlink_to(outside / "sad")
    with caplog.at_level(logging.WARNING, logger="pipeline.stages.pretrain"):
        files, refused = face_files(faces, CLASSES)
    names = {str(p.relative_to(faces)) for p, _ in files}
    assert "train/happy/near.jpg" in names and "train/happy/1.jpg" in names
    assert not {"train/happy/far.jpg", "train/happy/host.jpg"} & names
    assert not any(n.startswith("more/") for n in names) and refused == 3
    said = [r.getMessage() for r in caplog.records]
    assert sorted(m.rsplit("/", 2)[-2] + "/" + m.rsplit("/", 1)[-1] for m in said) == [
        "happy/far.jpg", "happy/host.jpg", "more/sad"], said

    only_links = tmp_path / "links"
    (only_links / "happy").mkdir(parents=True)
    (only_links / "happy" / "a.jpg").symlink_to(outside / "sad" / "far.jpg")
    assert face_files(only_links, CLASSES) == ([], 1)

    for make, said_of in [
            (lambda p: os.mkfifo(p), "a FIFO (named pipe), not a file; DVC would wait on it"),
            (lambda p: p.symlink_to(tmp_path / "gone.jpg"), "a link to"),
    ]:
        bad = tmp_path / f"bad-{len(said_of)}"
        (bad / "happy").mkdir(parents=True)
        make(bad / "happy" / "x.jpg")
        with pytest.raises(UserError, match=re.escape(said_of)):
            face_files(bad, CLASSES)
    latin = tmp_path / "latin"
    (latin / "happy").mkdir(parents=True)
    (latin / "happy" / os.fsdecode(b"caf\xe9.jpg")).write_bytes(b"x")
    with pytest.raises(UserError, match=r"caf\\xe9.jpg: the name is not UTF-8"):
        face_files(latin, CLASSES)
