"""Grouped, stratified k-fold cross-validation: folds never split a group, every non-test
image gets exactly one out-of-fold prediction, and a crashed run keeps its finished folds."""

from __future__ import annotations

import json
import logging
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from pipeline.config.params import Params
from pipeline.config.train import TrainParams
from pipeline.ml.crossval import assign_folds, plan
from pipeline.runtime.errors import UserError
from testing.project import REPO


def _rows(seed: int = 0) -> list[dict[str, str]]:
    """120 images in 70 groups of 1-5 members, two classes 70/50."""
    rng = np.random.default_rng(seed)
    rows, n = [], 0
    for group in range(70):
        label = "happy" if group < 40 else "sad"
        for _ in range(int(rng.integers(1, 6)) if group % 7 == 0 else 1 + (group % 3 == 0)):
            rows.append({"sha256": f"{n:064x}", "label": label, "group": f"g{group:03d}"})
            n += 1
    return rows


def test_no_group_is_split_and_every_image_is_held_out_once() -> None:
    rows = _rows()
    folds = plan(rows, 5, val_share=0.15 / 0.85, seed=7)
    held = Counter(s for fold in folds for s in fold.held_out)
    assert set(held) == {r["sha256"] for r in rows} and set(held.values()) == {1}
    fold_of = {s: i for i, fold in enumerate(folds) for s in fold.held_out}
    by_group = defaultdict(set)
    for row in rows:
        by_group[row["group"]].add(fold_of[row["sha256"]])
    assert all(len(f) == 1 for f in by_group.values())
    for fold in folds:
        assert not fold.val & fold.held_out  # a model never early-stops on what it predicts
        val_groups = {r["group"] for r in rows if r["sha256"] in fold.val}
        # whole groups in val too, and some of each class
        assert all({r["sha256"] for r in rows if r["group"] == g} <= fold.val for g in val_groups)
        assert {r["label"] for r in rows if r["sha256"] in fold.val} == {"happy", "sad"}


def test_folds_are_stratified_to_within_a_group() -> None:
    rows = _rows(seed=3)
    fold_of = assign_folds(rows, 4, seed=1)
    largest = max(Counter(r["group"] for r in rows).values())
    for label in ("happy", "sad"):
        per_fold = Counter(fold_of[r["group"]] for r in rows if r["label"] == label)
        assert max(per_fold.values()) - min(per_fold.values()) <= largest
    assert assign_folds(rows, 4, seed=1) == fold_of  # same seed, same folds
    assert assign_folds(rows, 4, seed=2) != fold_of


def test_too_few_groups_for_the_folds_is_one_clear_error() -> None:
    rows = [r for r in _rows() if r["label"] == "happy" or r["group"] in ("g040", "g041")]
    with pytest.raises(UserError, match=r"crossval.folds 5 needs at least 6 .* lower crossval.folds"):
        assign_folds(rows, 5, seed=0)


def test_stage_writes_one_out_of_fold_prediction_per_image_and_resumes(
        tiny_records: Path, tiny_train_params: TrainParams, repo_params: Params, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from pipeline.contracts.predictions import read_oof
    from pipeline.ml import crossval
    from pipeline.ml import fit as train
    from pipeline.ml.crossval import cross_validate
    from pipeline.stages.crossval import write_reports

    params = repo_params.model_copy(update={"train": tiny_train_params, "split": repo_params.split
                                            .model_copy(update={"fractions": {
                                                "train": 0.5, "val": 0.25, "test": 0.25}})})
    split_file = tiny_records.parent / "split" / "split.jsonl"
    rows = [json.loads(line) for line in split_file.read_text().splitlines()]
    calls, fit = [], train.train

    def crash_on_second_fold(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return fit(*args, **kwargs)

    monkeypatch.setattr(train, "train", crash_on_second_fold)
    with pytest.raises(KeyboardInterrupt):
        cross_validate(tiny_records, split_file, tmp_path / "work", params, 2)
    monkeypatch.undo()
    caplog.set_level(logging.INFO, logger=crossval.__name__)
    results, place = cross_validate(tiny_records, split_file, tmp_path / "work", params, 2)
    assert "fold 1/2: finished earlier, reused" in caplog.text  # the crash lost only fold 2
    assert "fold 2/2: training" in caplog.text
    # no made-up ETA from a reused fold: its line says so, and the trained fold's gives one
    assert re.search(r"fold 1/2: accuracy [\d.]+ on its \d+ held-out images \(finished earlier\)",
                     caplog.text)
    assert re.search(r"fold 2/2: accuracy .*training so far, ETA 0:00\)", caplog.text)
    out = tmp_path / "reports" / "crossval"
    write_reports(out, results, ["happy", "sad"], params)

    oof = read_oof(out / "oof.csv")
    non_test = {r["sha256"]: r for r in rows if r["split"] != "test"}
    assert sorted(r["sha256"] for r in oof) == sorted(non_test)  # each exactly once; no test image
    assert all(r["label"] == non_test[r["sha256"]]["label"] for r in oof)
    assert all(0.0 <= float(r["probability"]) <= 1.0 for r in oof)
    fold_of_group = defaultdict(set)
    for r in oof:
        fold_of_group[non_test[r["sha256"]]["group"]].add(r["fold"])
    assert all(len(f) == 1 for f in fold_of_group.values())
    details = json.loads((out / "details.json").read_text())
    assert details["folds"] == 2 and details["images"] == len(non_test)
    accuracies = [f["accuracy"] for f in details["per_fold"]]
    assert details["mean"]["accuracy"] == pytest.approx(np.mean(accuracies), abs=1e-6)
    assert details["sd"]["accuracy"] == pytest.approx(np.std(accuracies, ddof=1), abs=1e-6)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["accuracy"] == details["mean"]["accuracy"]
    assert metrics["accuracy_sd"] == details["sd"]["accuracy"]
    assert (out / "plots" / "folds.png").stat().st_size > 0
    assert place.exists()  # the stage removes it after writing the reports; the function does not

    from flows.artifacts import crossval_artifacts

    shown = crossval_artifacts(tmp_path)  # what the Prefect UI gets
    assert [a.key for a in shown] == ["crossval-metrics", "crossval-folds"]
    table = {row["metric"]: row for row in shown[0].table}
    assert table["accuracy"]["mean over folds"] == details["mean"]["accuracy"]
    assert table["roc_auc"]["pooled out-of-fold"] == details["pooled"]["roc_auc"]


def test_off_writes_empty_reports(repo_params: Params, tmp_path: Path) -> None:
    from pipeline.contracts.predictions import read_oof
    from pipeline.stages.crossval import write_reports

    write_reports(tmp_path, [], ["", ""], repo_params)
    assert read_oof(tmp_path / "oof.csv") == []
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"images": 0}
    assert [p.name for p in (tmp_path / "plots").iterdir()] == ["README.txt"]  # DVC: not empty


def test_finished_folds_are_not_reused_once_the_warm_start_model_changes(tmp_path: Path) -> None:
    from pipeline.config.params import load_params
    from pipeline.ml.crossval import _work_key

    params = load_params(REPO / "params.yaml")
    start = tmp_path / "model.keras"
    start.write_bytes(b"the first face model")
    warm = params.model_copy(update={"train": params.train.model_copy(
        update={"init_from": str(start)})})
    rows, meta = _rows(), {"image_size": 64}
    first = _work_key(rows, meta, warm, 5)
    assert _work_key(rows, meta, warm, 5) == first != _work_key(rows, meta, params, 5)
    start.write_bytes(b"the same path, trained again")
    assert _work_key(rows, meta, warm, 5) != first
