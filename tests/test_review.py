"""Review decisions: replayed in order (latest wins, undo takes back), applied by clean."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline import decisions as review
from pipeline.decisions import Decision
from pipeline.errors import UserError
from pipeline.params import CleanParams

A, B = "a" * 64, "b" * 64


def _d(sha: str, action: str, label: str = "happy") -> Decision:
    return Decision(sha, action, label, review.now())


def test_latest_decision_stands_and_undo_takes_back_one_at_a_time() -> None:
    history = [_d(A, "exclude"), _d(A, "relabel", "sad"), _d(B, "keep"), _d(B, "undo")]
    standing = review.standing(history)
    assert standing[A].action == "relabel" and standing[A].label == "sad" and B not in standing
    standing = review.standing([*history, _d(A, "undo")])
    assert standing[A].action == "exclude"  # the relabel taken back: the exclude stands again
    assert review.standing([*history, _d(A, "undo"), _d(A, "undo"), _d(A, "undo")]) == {}


def test_decisions_round_trip_and_a_bad_line_names_itself(tmp_path: Path) -> None:
    path = tmp_path / "review" / "decisions.jsonl"
    assert review.read(path) == []
    review.append(path, [_d(A, "exclude"), Decision(B, "relabel", "sad", "t", note="a cartoon")])
    assert [d.action for d in review.read(path)] == ["exclude", "relabel"]
    assert review.read(path)[1].note == "a cartoon"
    with path.open("a") as handle:
        handle.write(json.dumps({"sha256": A, "action": "delete"}) + "\n")
    with pytest.raises(UserError, match=r"decisions.jsonl:3: action 'delete' is not one of"):
        review.read(path)


def test_clean_applies_exclusions_and_relabels(tiny_raw: Path, tiny_clean_params: CleanParams,
                                               tmp_path: Path) -> None:
    from pipeline.clean import clean

    before = clean(tiny_raw, tmp_path / "before", tiny_clean_params)
    kept = [json.loads(line) for line in (tmp_path / "before" / "images.jsonl").open()]
    happy = [r for r in kept if r["label"] == "happy"]
    excluded, moved, looked = happy[0]["sha256"], happy[1]["sha256"], happy[2]["sha256"]
    path = tmp_path / "decisions.jsonl"
    review.append(path, [Decision(excluded, "exclude", "happy", "t", note="an emoji"),
                         _d(moved, "relabel", "sad"), _d(looked, "keep")])
    after = clean(tiny_raw, tmp_path / "after", tiny_clean_params, path)

    rows = {r["sha256"]: r for r in map(json.loads, (tmp_path / "after" / "images.jsonl").open())}
    rejected = [json.loads(line) for line in (tmp_path / "after" / "rejected.jsonl").open()]
    assert excluded not in rows
    assert {"reason": "excluded_in_review", "detail": "an emoji"}.items() <= next(
        r for r in rejected if r["sha256"] == excluded).items()
    assert rows[moved]["label"] == "sad" and rows[moved]["label_source"] == "review"
    assert rows[looked]["label_source"] == "scrape" and rows[looked]["reviewed"] is True
    assert after.kept == {"happy": before.kept["happy"] - 2, "sad": before.kept["sad"] + 1}
    assert after.review == {"decisions": 3, "excluded": 1, "relabelled": 1, "marked_keep": 1,
                            "kept_reviewed": 2, "kept_unreviewed": sum(after.kept.values()) - 2}
    review.append(path, [_d(excluded, "undo")])  # taken back: the image is kept again
    clean(tiny_raw, tmp_path / "undone", tiny_clean_params, path)
    assert excluded in (tmp_path / "undone" / "images.jsonl").read_text()


def test_a_relabel_to_an_unknown_class_is_one_clear_error(tiny_raw: Path, tmp_path: Path,
                                                          tiny_clean_params: CleanParams) -> None:
    from pipeline.clean import clean

    sha = json.loads((tiny_raw / "manifest.jsonl").read_text().splitlines()[0])["sha256"]
    path = tmp_path / "decisions.jsonl"
    review.append(path, [_d(sha, "relabel", "angry")])
    with pytest.raises(UserError, match=r"relabelled 'angry', not one of the classes"):
        clean(tiny_raw, tmp_path / "out", tiny_clean_params, path)


def test_suspects_rank_a_known_mislabel_first(tiny_raw: Path, tiny_clean_params: CleanParams,
                                              repo_params, tmp_path: Path) -> None:
    from pipeline.clean import clean
    from pipeline.suspects import Evidence, suspects

    clean(tiny_raw, tmp_path / "clean", tiny_clean_params)
    rows = [json.loads(line) for line in (tmp_path / "clean" / "images.jsonl").open()]
    rng = np.random.default_rng(0)
    # out-of-fold p(sad): a model that is right and sure, but for one happy image it calls sad
    probability = {r["sha256"]: (float(rng.uniform(0.01, 0.2) if r["label"] == "happy"
                                       else rng.uniform(0.8, 0.99)), "out_of_fold") for r in rows}
    wrong = next(r for r in rows if r["label"] == "happy")["sha256"]
    probability[wrong] = (0.97, "out_of_fold")
    evidence = Evidence([{k: str(r[k]) for k in ("file", "label", "sha256", "group", "group_size")}
                         for r in rows], {r["sha256"]: "train" for r in rows}, probability,
                        ["happy", "sad"])
    report = suspects(evidence, tiny_raw, tmp_path / "suspects", repo_params.suspects,
                      repo_params.faces, 0.5)
    ranked = [json.loads(line) for line in (tmp_path / "suspects" / "suspects.jsonl").open()]
    assert sorted(r["sha256"] for r in ranked) == sorted(r["sha256"] for r in rows)  # each once
    assert ranked[0]["sha256"] == wrong and "label_issue" in ranked[0]["flags"]
    assert ranked[0]["probability_of_class"] == pytest.approx(0.03)
    assert sum(report["flags"]["label_issue"].values()) == 1  # the sure, right ones are not flagged
    assert [r["score"] for r in ranked] == sorted((r["score"] for r in ranked), reverse=True)


def test_no_face_in_a_plain_picture(repo_params) -> None:
    from pipeline.faces import detect

    flat = np.full((240, 320, 3), 128, np.uint8)
    flat[60:180, 100:220] = 200  # a light square: no face
    assert detect(flat, repo_params.faces) == []
