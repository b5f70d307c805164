"""The face detectors on real web photos: faces found, ms per image, and contact sheets to look at.

On the dev web set (``../shared/data/webfaces-happysad-dev.tar``, 906 images), for each
detector setting of ``SETTINGS`` (params.yaml's faces section with a few keys changed): the
images with a face found (pooled and per source, the ``repo`` column of its MANIFEST.csv), and
the median and mean milliseconds per image on one core (decode excluded: the image is
decoded once, before any timing). Then the contact sheets
``reports/bench/faces-<setting>.png`` of ``--sheet`` images drawn at random (the same for
every setting): each with its largest face's box (green) and the aligned crop the face view
gets, a red frame where none was found. A person counts on them which images show a person
(photos of people), and of those, which got a face: that is the "faces found on photos of
people" figure, and the false faces (a box on no face).

Run: ``uv run python -m bench.faces [--settings haar,mtcnn] [--sheet 120] [--work DIR]``.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import print_table
from bench.crossval import DEV_TAR, REPO

SETTINGS = {  # faces-section changes, by name
    "blazeface": {"detector": "blazeface", "min_confidence": 0.5},
    "blazeface_0.7": {"detector": "blazeface", "min_confidence": 0.7},
    "haar": {"detector": "haar"},
    "mtcnn": {"detector": "mtcnn"},
    "mtcnn_640": {"detector": "mtcnn", "max_side": 640},
    "mtcnn_then_haar": {"detector": "mtcnn_then_haar"},
    "mtcnn_640_small": {"detector": "mtcnn", "max_side": 640, "min_face": 0.05},
    "mtcnn_0.8": {"detector": "mtcnn", "min_confidence": 0.8, "max_side": 640},
}


def _images(folder: Path) -> list[tuple[Path, str]]:
    """(file, source) of every image, in a fixed order."""
    with (folder / "MANIFEST.csv").open() as handle:
        source = {row["file"]: row["repo"].split("/")[0] for row in csv.DictReader(handle)}
    return sorted((folder / name, repo) for name, repo in source.items())


def _detect(files: list[Path], setting: dict) -> tuple[list[dict], list[float]]:
    import cv2

    from pipeline.config.params import load_params
    from pipeline.vision.faces import FacesParams, aligned_crop, detect

    params = FacesParams(**{**load_params(REPO / "params.yaml").faces.model_dump(), **setting})
    found, took = [], []
    for index, path in enumerate(files):
        rgb = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        started = time.perf_counter()
        faces = detect(rgb, params)
        if faces:
            aligned_crop(rgb, faces[0], 0.4)
        if index:  # the first call builds the detector
            took.append(1000 * (time.perf_counter() - started))
        found.append({"file": path.name, "faces": len(faces),
                      "box": [faces[0].x, faces[0].y, faces[0].width, faces[0].height] if faces else None,
                      "eyes": faces[0].eyes if faces else None})
    return found, took


def contact_sheet(files: list[Path], results: list[dict], out: Path, margin: float = 0.4) -> None:
    """Thumbnails (box in green, or a red frame: none found), each with its aligned face crop."""
    import cv2

    from pipeline.vision.faces import Face, aligned_crop

    cell, columns = 160, 10
    rows = -(-len(files) // columns)
    sheet = np.full((rows * (cell + 64), columns * cell, 3), 255, np.uint8)
    for index, (path, result) in enumerate(zip(files, results, strict=True)):
        rgb = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        scale = cell / max(rgb.shape[:2])
        thumb = cv2.resize(rgb, (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale))),
                           interpolation=cv2.INTER_AREA)
        top, left = index // columns * (cell + 64), index % columns * cell
        if result["box"]:
            x, y, w, h = (round(v * scale) for v in result["box"])
            cv2.rectangle(thumb, (x, y), (x + w, y + h), (0, 220, 0), 2)
            face = Face(*result["box"], eyes=tuple(map(tuple, result["eyes"])) if result["eyes"] else None)
            crop = cv2.resize(aligned_crop(rgb, face, margin), (60, 60), interpolation=cv2.INTER_AREA)
            sheet[top + cell + 2:top + cell + 62, left + 2:left + 62] = crop
        else:
            cv2.rectangle(thumb, (0, 0), (thumb.shape[1] - 1, thumb.shape[0] - 1), (230, 0, 0), 4)
        sheet[top:top + thumb.shape[0], left:left + thumb.shape[1]] = thumb
        cv2.putText(sheet, str(index), (left + 70, top + cell + 40), cv2.FONT_HERSHEY_SIMPLEX, 0.6,
                    (0, 0, 0), 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faces", description=__doc__.split("\n")[0])
    parser.add_argument("--settings", default="haar,mtcnn,mtcnn_640",
                        help=f"comma-separated, of {', '.join(SETTINGS)}")
    parser.add_argument("--sheet", type=int, default=120, help="images on each contact sheet")
    parser.add_argument("--work", type=Path, default=None, help="keep results here")
    args = parser.parse_args(argv)
    if not DEV_TAR.exists():
        print(f"bench.faces: {DEV_TAR} not found; skipped")  # noqa: T201
        return 0
    from pipeline.runtime.log import load_tensorflow, setup_logging

    setup_logging(False)
    load_tensorflow()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        folder = work / "webfaces"
        if not (folder / "MANIFEST.csv").exists():
            with tarfile.open(DEV_TAR) as tar:
                tar.extractall(folder, filter="data")
        images = _images(folder)
        files = [path for path, _ in images]
        sources = sorted({s for _, s in images})
        sample = sorted(random.Random(0).sample(range(len(files)), min(args.sheet, len(files))))
        rows = []
        for name in args.settings.split(","):
            found, took = _detect(files, SETTINGS[name])
            (work / f"faces-{name}.json").write_text(json.dumps(found))
            hits = [bool(r["faces"]) for r in found]
            per_source = ", ".join(
                f"{s} {sum(h for h, (_, src) in zip(hits, images, strict=True) if src == s)}/"
                f"{sum(1 for _, src in images if src == s)}" for s in sources)
            rows.append((f"{name}: images with a face", f"{sum(hits)}/{len(hits)}", per_source))
            rows.append((f"{name}: ms per image", f"{statistics.median(took):.0f}",
                         f"median; mean {statistics.fmean(took):.0f}, one core"))
            sheet = REPO / "reports" / "bench" / f"faces-{name}.png"
            contact_sheet([files[i] for i in sample], [found[i] for i in sample], sheet)
            rows.append((f"{name}: contact sheet", str(sheet.relative_to(REPO)),
                         f"{len(sample)} images, the same for every setting"))
    print_table(f"Face detectors on the dev web set ({len(files)} images)", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
