"""The clean stage against the demo site's planted faults, and its near-duplicate search."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from demo.faces import draw_face
from pipeline.config.clean import CleanParams
from pipeline.runtime.errors import UserError
from pipeline.stages.clean import clean
from pipeline.vision.near_duplicates import chance_pairs, hamming, near_duplicate_pairs, phash
from testing.project import TINY_SITE

VALIDATION_REASONS = {"empty", "not_an_image", "corrupt", "too_small", "too_many_pixels",
                      "unsupported_format", "bad_aspect_ratio", "blank", "unreadable"}


@pytest.fixture(scope="module")
def cleaned(tiny_raw: Path, tiny_clean_params: CleanParams, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clean") / "clean"
    clean(tiny_raw, out, tiny_clean_params)
    return out


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def planted(site: Path) -> list[dict]:
    return json.loads((site / "ground_truth.json").read_text())["images"]


def planted_where(site: Path, keep: Callable[[dict], bool]) -> list[dict]:
    """The ground truth's entries that ``keep`` picks; never none, so no test passes by
    checking nothing."""
    entries = [entry for entry in planted(site) if keep(entry)]
    assert entries, "the ground truth has no such entry: the test would check nothing"
    return entries


def url(entry: dict) -> str:
    return "{demo}" + entry["url"]


def test_every_planted_fault_is_rejected_with_its_reason(cleaned: Path, tiny_site: Path) -> None:
    rejected = {(r["url"], r["label"]): r for r in read(cleaned / "rejected.jsonl")}
    kept = {(r["url"], r["label"]) for r in read(cleaned / "images.jsonl")}
    for entry in planted_where(tiny_site, lambda e: e["clean"] in VALIDATION_REASONS):
        row = rejected[(url(entry), entry["label"])]
        assert row["reason"] == entry["clean"], (entry["kind"], row)
    for entry in planted_where(tiny_site, lambda e: e["clean"] == "exact_duplicate"):
        # Whichever copy was fetched first is kept; the other names it.
        copy, original = (url(entry), entry["label"]), ("{demo}" + entry["of"], entry["label"])
        first, second = (original, copy) if original in kept else (copy, original)
        assert first in kept
        assert rejected[second]["reason"] == "exact_duplicate"
        assert rejected[second]["of"] == first[0]


def test_awkward_but_valid_images_are_kept_and_converted(cleaned: Path, tiny_site: Path,
                                                         tiny_raw: Path) -> None:
    kept = {r["url"]: r for r in read(cleaned / "images.jsonl")}
    awkward = {"animated_gif", "cmyk_jpeg", "png16_alpha", "palette_png_alpha", "exif_rotated",
               "slow", "redirect"}
    entries = planted_where(tiny_site, lambda e: e["kind"] in awkward)
    assert {e["kind"] for e in entries} == awkward  # every kind planted, so every kind checked
    for entry in entries:
        assert url(entry) in kept, entry["kind"]
    exif = next(e for e in planted(tiny_site) if e["kind"] == "exif_rotated")
    row = kept[url(exif)]
    with Image.open(tiny_raw / row["file"]) as stored:
        assert (row["width"], row["height"]) == (stored.height, stored.width)  # made upright


def test_near_duplicates_share_a_group_and_one_is_kept(cleaned: Path, tiny_site: Path) -> None:
    rows = read(cleaned / "images.jsonl") + read(cleaned / "rejected.jsonl")
    group = {(r["url"], r["label"]): r.get("group") for r in rows}
    kept = {(r["url"], r["label"]) for r in read(cleaned / "images.jsonl")}
    for entry in planted_where(tiny_site, lambda e: e["clean"] == "near_duplicate"):
        pair = [(url(entry), entry["label"]), ("{demo}" + entry["of"], entry["label"])]
        assert group[pair[0]] is not None and group[pair[0]] == group[pair[1]], entry["kind"]
        assert len(kept & set(pair)) == 1


def test_cross_class_copies_are_conflicts_and_kept_nowhere(cleaned: Path, tiny_site: Path) -> None:
    rejected = read(cleaned / "rejected.jsonl")
    conflicts = {(r["url"], r["label"]) for r in rejected if r["reason"] == "label_conflict"}
    kept_urls = {r["url"] for r in read(cleaned / "images.jsonl")}
    kinds = {"cross_class_same_url", "cross_class_copy"}
    entries = planted_where(tiny_site, lambda e: e["kind"] in kinds)
    assert {e["kind"] for e in entries} == kinds
    for entry in entries:
        assert (url(entry), "sad") in conflicts
        assert ("{demo}" + entry["of"], "happy") in conflicts
        assert url(entry) not in kept_urls and "{demo}" + entry["of"] not in kept_urls
    report = json.loads((cleaned / "report.json").read_text())
    assert report["label_conflicts"] >= 2


def test_no_good_image_is_rejected(cleaned: Path, tiny_site: Path) -> None:
    related = {e["of"] for e in planted(tiny_site) if e["of"]}
    rejected = {(r["url"], r["label"]) for r in read(cleaned / "rejected.jsonl")}
    good = planted_where(tiny_site, lambda e: e["kind"] == "face" and e["clean"] is None
                         and e["url"] not in related)
    assert len(good) >= TINY_SITE.images_per_class  # most faces are plain good ones
    for entry in good:
        assert (url(entry), entry["label"]) not in rejected


def test_report_counts_add_up(cleaned: Path, tiny_raw: Path) -> None:
    report = json.loads((cleaned / "report.json").read_text())
    records = (tiny_raw / "manifest.jsonl").read_text().count("\n")
    assert report["raw_records"] == records
    assert sum(report["kept"].values()) + sum(report["rejected"].values()) == records
    assert report["kept"] == {"happy": sum(1 for r in read(cleaned / "images.jsonl")
                                           if r["label"] == "happy"),
                              "sad": sum(1 for r in read(cleaned / "images.jsonl")
                                         if r["label"] == "sad")}


def test_clean_is_deterministic(cleaned: Path, tiny_raw: Path, tiny_clean_params, tmp_path) -> None:
    clean(tiny_raw, tmp_path / "again", tiny_clean_params.model_copy(update={"workers": 2}))
    for name in ("images.jsonl", "rejected.jsonl", "report.json"):
        assert (tmp_path / "again" / name).read_bytes() == (cleaned / name).read_bytes()


def test_missing_or_broken_manifest_is_one_line(tmp_path: Path, tiny_clean_params) -> None:
    with pytest.raises(UserError, match=r"manifest.jsonl: not found; run the scrape stage"):
        clean(tmp_path / "raw", tmp_path / "out", tiny_clean_params)
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "manifest.jsonl").write_text("{not json}\n")
    with pytest.raises(UserError, match=r"manifest.jsonl: a record is not valid JSON"):
        clean(tmp_path / "raw", tmp_path / "out", tiny_clean_params)
    assert not (tmp_path / "out").exists()


def test_a_class_without_usable_images_stops_without_outputs(tiny_raw: Path, tmp_path: Path,
                                                             tiny_clean_params) -> None:
    raw = tmp_path / "raw"
    shutil.copytree(tiny_raw, raw)
    for image in (raw / "sad").iterdir():
        image.write_bytes(b"")  # every sad file unreadable as an image
    out = tmp_path / "clean"
    out.mkdir()
    (out / "images.jsonl").write_text("previous\n")
    with pytest.raises(UserError, match=r"class 'sad' has no usable image"):
        clean(raw, out, tiny_clean_params)
    assert (out / "images.jsonl").read_text() == "previous\n"  # untouched


def test_near_duplicate_search_equals_brute_force() -> None:
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, size=3000, dtype=np.uint64)
    for i in range(60):  # planted neighbours at 0..10 bits
        bits = rng.choice(64, size=i % 11, replace=False)
        hashes[2000 + i] = hashes[i] ^ np.uint64(sum(1 << int(b) for b in bits))
    for max_bits in (0, 4, 8, 10):
        dist = hamming(hashes[:, None], hashes[None, :])
        i, j = np.triu_indices(len(hashes), 1)
        close = dist[i, j] <= max_bits
        expected = np.stack([i[close], j[close]], axis=1)
        assert np.array_equal(near_duplicate_pairs(hashes, max_bits), expected)


def test_chance_pairs_predict_what_the_search_finds_among_unrelated_hashes() -> None:
    rng = np.random.default_rng(1)
    hashes = rng.integers(0, 2**64 - 1, size=12_000, dtype=np.uint64, endpoint=True)
    found = len(near_duplicate_pairs(hashes, 16))
    assert found == pytest.approx(chance_pairs(len(hashes), 16), rel=0.05)  # ~2800, sd ~53


def bits(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


def test_phash_survives_reencoding_and_resizing_and_mostly_small_crops() -> None:
    rng = np.random.default_rng(5)
    faces = [draw_face(rng, "happy") for _ in range(9)]
    crops = []
    for face in faces:
        buf = io.BytesIO()
        face.save(buf, "JPEG", quality=35)
        w, h = face.size
        assert bits(phash(face), phash(Image.open(buf))) <= 4
        assert bits(phash(face), phash(face.resize((w * 2 // 3, h * 2 // 3)))) <= 4
        crops.append(bits(phash(face), phash(face.crop((w // 30, h // 30, w - w // 30,
                                                         h - h // 30)))))
    assert np.median(crops) <= 8  # crops move more bits: bench/dedupe.py measures recall
    distinct = [bits(phash(a), phash(b)) for a, b in zip(faces, faces[1:], strict=False)]
    assert min(distinct) > 8


def test_clean_replaces_only_its_own_files(cleaned: Path, tiny_raw: Path, tiny_clean_params,
                                            tmp_path: Path) -> None:
    """The output folder keeps what is not clean's (the .gitignore git tracks); clean's own
    files are replaced whole."""
    out = tmp_path / "clean"
    out.mkdir()
    (out / ".gitignore").write_text("/images.jsonl\n")
    (out / "images.jsonl").write_text("stale\n")
    clean(tiny_raw, out, tiny_clean_params)
    assert (out / ".gitignore").read_text() == "/images.jsonl\n"
    assert (out / "images.jsonl").read_bytes() == (cleaned / "images.jsonl").read_bytes()
    assert not out.with_name("clean.partial").exists()


def test_groups_cannot_chain_a_to_c_through_b() -> None:
    """A~B and B~C are confirmed but A and C are not: no group holds both A and C, and every
    member is confirmed against its group's representative."""
    from pipeline.vision.near_duplicates import group_by_representative

    a, b, c, d = range(4)
    pairs = np.array([[a, b], [b, c], [c, d]])
    representative, similarity = group_by_representative(4, pairs, np.array([0.97, 0.99, 0.96]))
    assert representative.tolist() == [a, a, c, c]  # C is not A's: it starts a group, D joins it
    assert similarity.tolist() == pytest.approx([1.0, 0.97, 1.0, 0.96])
    # the most similar earlier representative wins, whatever the order of the pairs
    representative, _ = group_by_representative(3, np.array([[1, 2], [0, 2]]), np.array([0.99, 0.96]))
    assert representative.tolist() == [0, 1, 1]


def test_copies_confirm_and_faces_differing_only_in_expression_do_not(repo_params) -> None:
    """The demo's re-encodes, resizes and 4% crops are confirmed copies; the same drawn face
    made happy and made sad (same seed: the mouth and brows differ), a pair across classes,
    is not, though it correlates as well as a copy: one block of the difference is too large."""
    import io

    from PIL import Image

    from demo.faces import FaceStyle, draw_face
    from pipeline.vision.near_duplicates import pair_similarity, thumbnails

    def jpeg(image: Image.Image, quality: int) -> Image.Image:
        out = io.BytesIO()
        image.save(out, "JPEG", quality=quality)
        return Image.open(io.BytesIO(out.getvalue())).convert("RGB")

    clean_params = repo_params.clean
    for seed in range(24):
        happy = jpeg(draw_face(np.random.default_rng(seed), "happy", FaceStyle()), 85)
        sad = jpeg(draw_face(np.random.default_rng(seed), "sad", FaceStyle()), 85)
        w, h = happy.size
        copies = [jpeg(happy, 40), jpeg(happy.resize((w * 3 // 4, h * 3 // 4)), 90),
                  jpeg(happy.crop((w // 25, h // 25, w - w // 25, h - h // 25)), 90)]
        thumbs = np.stack([thumbnails(i) for i in (happy, sad, *copies)])
        scores, residual = pair_similarity(thumbs, np.array([[0, 1], [0, 2], [0, 3], [0, 4]]))
        copy = ((scores >= clean_params.near_duplicate_similarity)
                & (residual <= clean_params.near_duplicate_block_residual))
        assert copy.tolist() == [False, True, True, True], (seed, scores, residual)
