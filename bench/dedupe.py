"""Near-duplicate grouping against ground truth: the demo site with many planted copies, and
FER-2013 (``../shared/data``, if present) for group sizes and a contact sheet of merged pairs.

``python -m bench.dedupe [--copies 25] [--fer PATH.tar] [--sheet merged.png]``. Side by side:
the params' grouping (hash candidates confirmed by aligned thumbnails, around
representatives) and the hash alone at 8 bits, as clean grouped before (but without
chaining). A copy counts as found when clean puts it in its original's group.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tarfile
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from bench import print_table
from demo.site import generate_site
from pipeline.config.clean import CleanParams
from pipeline.config.params import load_params
from pipeline.scrape.folder import import_folder
from pipeline.stages.clean import clean

REPO = Path(__file__).resolve().parents[1]
KINDS = ("near_duplicate_reencoded", "near_duplicate_resized", "near_duplicate_cropped")


def _import(files: dict[str, list[Path]], work: Path) -> Path:
    """The files as a folder source under ``work/import``, imported into ``work/raw``."""
    for label, paths in files.items():
        (work / "import" / label).mkdir(parents=True, exist_ok=True)
        for n, path in enumerate(paths):
            shutil.copyfile(path, work / "import" / label / f"{n:06d}{path.suffix}")
    for label in files:
        import_folder("bench", str(work / "import"), [label], work / "raw", max_images=10**9,
                      max_bytes=2**30, progress_every_s=1e9)
    return work / "raw"


def _groups(out: Path) -> dict[str, str]:
    """Every image's group id (a file name in data/raw), kept or rejected."""
    group = {}
    for name in ("images.jsonl", "rejected.jsonl"):
        for line in (out / name).read_text().splitlines():
            row = json.loads(line)
            if row.get("group"):
                group[row["file"]] = row["group"]
    return group


def demo_rows(params: CleanParams, copies: int, work: Path) -> list[tuple[str, str, str]]:
    site_params = load_params(REPO / "params.yaml").demo_site
    site_params = site_params.model_copy(update={
        "images_per_class": max(site_params.images_per_class, 6 + 4 * copies),
        "copies_per_class": copies})
    truth = generate_site(work / "site", site_params)
    www = work / "site" / "www"
    images = [i for i in truth["images"] if i["fetch"] == "stored" and i["kind"] in
              ("face", *KINDS) and (www / i["url"].lstrip("/")).exists()]
    by_label: dict[str, list[Path]] = {}
    for image in images:
        by_label.setdefault(image["label"], []).append(www / image["url"].lstrip("/"))
    raw = _import(by_label, work / "demo")
    stored = {json.loads(line)["sha256"]: json.loads(line)["path"]
              for line in (raw / "manifest.jsonl").read_text().splitlines()}
    path_of = {i["url"]: stored[i["sha256"]] for i in images}
    rows = []
    for name, variant in (("params", params),
                          ("hash only, 8 bits", params.model_copy(update={
                              "near_duplicate_bits": 8, "near_duplicate_similarity": -1.0,
                              "near_duplicate_block_residual": 1e9}))):
        started = time.perf_counter()
        clean(raw, work / f"clean-{len(rows)}", variant)
        seconds = time.perf_counter() - started
        group = _groups(work / f"clean-{len(rows)}")
        found = Counter(i["kind"] for i in images if i["kind"] in KINDS
                        and group.get(path_of[i["url"]]) == group.get(path_of[i["of"]]))
        planted = Counter(i["kind"] for i in images if i["kind"] in KINDS)
        originals = {i["of"] for i in images if i["kind"] in KINDS}
        distinct = [i for i in images if i["kind"] == "face" and i["url"] not in originals]
        sizes = Counter(group.get(path_of[i["url"]]) for i in distinct)
        merged = sum(1 for i in distinct if sizes[group.get(path_of[i["url"]])] > 1)
        rows.append((f"demo, {name}", " ".join(
            f"{found[k]}/{planted[k]}" for k in KINDS),
            f"re-encoded, resized, cropped copies found; {merged} of {len(distinct)} distinct "
            f"faces merged ({merged / len(distinct):.1%}); clean {seconds:.1f} s"))
    return rows


def fer_rows(params: CleanParams, tar: Path, work: Path, sheet: Path) -> list[tuple[str, str, str]]:
    with tarfile.open(tar) as archive:
        archive.extractall(work / "fer", filter="data")
    by_label: dict[str, list[Path]] = {}
    for path in sorted((work / "fer").rglob("*")):
        if path.is_file() and path.parent.name in ("happy", "sad"):
            by_label.setdefault(path.parent.name, []).append(path)
    raw = _import(by_label, work / "ferraw")
    started = time.perf_counter()
    report = clean(raw, work / "fer-clean", params.model_copy(update={"min_side": 32}))
    seconds = time.perf_counter() - started
    group = _groups(work / "fer-clean")
    sizes = Counter(group.values())
    merged = [(f, g) for f, g in group.items() if sizes[g] > 1]
    _contact_sheet(raw, merged, sheet)
    return [("FER-2013 train+validation", f"{sum(len(v) for v in by_label.values())} images",
             f"{report.near_duplicate_groups} groups, largest {max(sizes.values())}; "
             f"{report.confirmed_pairs} of {report.candidate_pairs} candidate pairs confirmed; "
             f"rejected {dict(report.rejected)}; clean {seconds:.1f} s; merged pairs in {sheet}")]


def _contact_sheet(raw: Path, merged: list[tuple[str, str]], path: Path, pairs: int = 50) -> None:
    """50 random merged pairs (member, representative) side by side, to check by eye."""
    from PIL import Image

    rng = np.random.default_rng(0)
    members = [(f, g) for f, g in merged if not f.endswith(g + Path(f).suffix)]
    chosen = [members[i] for i in rng.choice(len(members), min(pairs, len(members)), replace=False)]
    cell = 72
    canvas = Image.new("RGB", (5 * (2 * cell + 8), cell * ((len(chosen) + 4) // 5)), "white")
    reps = {Path(f).stem: f for f, _ in merged}
    for n, (member, group_id) in enumerate(chosen):
        x, y = (n % 5) * (2 * cell + 8), (n // 5) * cell
        for offset, file in ((0, member), (cell, reps.get(group_id, member))):
            canvas.paste(Image.open(raw / file).convert("RGB").resize((cell - 2, cell - 2)),
                         (x + offset, y))
    canvas.save(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=25, help="planted sets per class")
    parser.add_argument("--fer", type=Path, default=REPO.parent / "shared" / "data" /
                        "fer2013-happysad-trainval.tar")
    parser.add_argument("--sheet", type=Path, default=Path("reports/bench/dedupe-fer-pairs.png"))
    args = parser.parse_args(argv)
    params = load_params(REPO / "params.yaml").clean
    with tempfile.TemporaryDirectory(prefix="happysad-bench-") as tmp:
        rows = demo_rows(params, args.copies, Path(tmp))
        if args.fer.exists():
            args.sheet.parent.mkdir(parents=True, exist_ok=True)
            rows += fer_rows(params, args.fer, Path(tmp), args.sheet)
    print_table("happysad near-duplicate grouping", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
