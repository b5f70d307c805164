"""The split stage: no group straddles splits, splits are stable as data grows, fractions hold."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest

from pipeline.config.split import SplitParams
from pipeline.contracts.split import split_of
from pipeline.runtime.errors import UserError
from pipeline.stages.split import split

PARAMS = SplitParams(seed=7, fractions={"train": 0.7, "val": 0.15, "test": 0.15})


def fake_images(n: int, start: int = 0) -> list[dict[str, str]]:
    rows = []
    for i in range(start, start + n):
        sha = hashlib.sha256(str(i).encode()).hexdigest()
        rows.append({"file": f"x/{sha}.jpg", "label": "happy" if i % 3 else "sad",
                     "sha256": sha, "group": sha})
    return rows


def write(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_split(out: Path) -> dict[str, str]:
    return {r["sha256"]: r["split"] for r in map(json.loads, (out / "split.jsonl").open())}


def test_groups_stay_whole_and_every_image_appears_once(tmp_path: Path) -> None:
    rows = fake_images(300)
    for row in rows[:60]:  # near-duplicate groups larger than one member
        row["group"] = rows[0]["group"] if int(row["sha256"], 16) % 2 else rows[1]["group"]
    split(write(tmp_path / "images.jsonl", rows), tmp_path / "split", PARAMS)
    records = [json.loads(line) for line in (tmp_path / "split" / "split.jsonl").open()]
    assert sorted(r["sha256"] for r in records) == sorted(r["sha256"] for r in rows)
    per_group: dict[str, set[str]] = {}
    for record in records:
        per_group.setdefault(record["group"], set()).add(record["split"])
    assert all(len(splits) == 1 for splits in per_group.values())


def test_adding_20_percent_more_images_moves_no_existing_image(tmp_path: Path) -> None:
    before = fake_images(1000)
    split(write(tmp_path / "a.jsonl", before), tmp_path / "before", PARAMS)
    after = fake_images(200, start=1000) + before[::-1]  # new images, another order
    split(write(tmp_path / "b.jsonl", after), tmp_path / "after", PARAMS)
    old, new = read_split(tmp_path / "before"), read_split(tmp_path / "after")
    assert all(new[sha] == name for sha, name in old.items())
    assert len(new) == 1200


def test_fractions_hold_per_class_and_seed_matters(tmp_path: Path) -> None:
    report = split(write(tmp_path / "i.jsonl", fake_images(6000)), tmp_path / "s", PARAMS)
    for label, shares in report.fractions.items():
        for name, wanted in PARAMS.fractions.items():
            assert abs(shares[name] - wanted) < 0.025, (label, name)
    other = SplitParams(seed=8, fractions=PARAMS.fractions)
    groups = [r["group"] for r in fake_images(200)]
    ours = [split_of(g, PARAMS.fractions, PARAMS.seed) for g in groups]
    assert ours != [split_of(g, other.fractions, other.seed) for g in groups]
    assert Counter(ours) == Counter(
        r["split"] for r in map(json.loads, (tmp_path / "s" / "split.jsonl").open())
        if r["group"] in set(groups))


def test_a_split_without_a_class_stops_without_outputs(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"split '(train|val|test)' has no '(happy|sad)' image"):
        split(write(tmp_path / "i.jsonl", fake_images(4)), tmp_path / "s", PARAMS)
    assert not (tmp_path / "s").exists()


def test_bad_input_names_the_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"images.jsonl: not found; run the clean stage"):
        split(tmp_path / "images.jsonl", tmp_path / "s", PARAMS)
    (tmp_path / "images.jsonl").write_text(json.dumps(fake_images(1)[0]) + "\n{\"file\": 1}\n")
    with pytest.raises(UserError, match=r"images.jsonl:2: not a clean image record"):
        split(tmp_path / "images.jsonl", tmp_path / "s", PARAMS)


def test_split_runs_on_a_real_clean_output(tiny_raw: Path, tiny_clean_params, tmp_path: Path) -> None:
    from pipeline.stages.clean import clean

    clean(tiny_raw, tmp_path / "clean", tiny_clean_params)
    report = split(tmp_path / "clean" / "images.jsonl", tmp_path / "split",
                   SplitParams(seed=3, fractions={"train": 0.5, "val": 0.25, "test": 0.25}))
    kept = (tmp_path / "clean" / "images.jsonl").read_text().count("\n")
    assert sum(sum(c.values()) for c in report.counts.values()) == kept
