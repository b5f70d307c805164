"""``happysad predict PATH...``: label images with the saved model, one JSON line each.

Files or folders (searched recursively) in; for each image a line with its path,
label and the probability of that label. Images go through the clean stage's
checks and the tfrecords stage's resize, so the model sees what it was trained
on. A file that is not a usable image gets a one-line error on stderr and the
rest still run; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import UserError
from pipeline.images import ImageRules, UnusableImageError, open_rgb, square_rgb
from pipeline.params import load_params

logger = logging.getLogger(__name__)
SUFFIXES = {".jpg", ".jpeg", ".jpe", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".mpo"}


@dataclass(frozen=True)
class Prediction:
    path: str
    label: str
    probability: float
    probabilities: dict[str, float]


def image_files(paths: list[Path]) -> Iterator[Path]:
    """The files named, and image files under the folders named, in a stable order."""
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
        else:
            yield path  # named explicitly: tried whatever its suffix, so mistakes are reported


def _load(model_dir: Path):
    import keras

    model_path, card_path = model_dir / "model.keras", model_dir / "model_card.json"
    if not model_path.exists() or not card_path.exists():
        raise UserError(f"{model_dir}: no model.keras and model_card.json; run `make run` (the "
                        "retrain flow promotes a model there), or pass --model-dir models for the "
                        "last one `dvc repro` trained")
    contract = json.loads(card_path.read_text())["input"]
    return keras.models.load_model(model_path, safe_mode=True, compile=False), contract


def _skip(path: Path, why: str) -> None:
    logger.warning("%s: %s; skipped", path, why)


def predict(paths: list[Path], model_dir: Path, rules: ImageRules, batch_size: int = 32,
            on_error: Callable[[Path, str], None] = _skip) -> Iterator[Prediction]:
    """Predictions in input order; each unusable file goes to ``on_error`` and is skipped."""
    model, contract = _load(model_dir)
    names, size = contract["class_names"], contract["image_size"]
    batch: list[tuple[Path, np.ndarray]] = []

    def flush() -> Iterator[Prediction]:
        pixels = np.stack([p for _, p in batch])
        probs = np.asarray(model(pixels, training=False), dtype=np.float64)[:, 0]
        for (path, _), p in zip(batch, probs, strict=True):
            label = int(p >= 0.5)
            yield Prediction(str(path), names[label], round(float(p if label else 1 - p), 6),
                             {names[0]: round(float(1 - p), 6), names[1]: round(float(p), 6)})
        batch.clear()

    for path in image_files(paths):
        try:
            data = path.read_bytes()
        except OSError as err:
            on_error(path, f"cannot read ({err.strerror or err})")
            continue
        try:
            open_rgb(data, rules)  # the clean stage's checks
            pixels = square_rgb(data, size, contract["resize"])  # as the tfrecords stage does
        except UnusableImageError as err:
            on_error(path, f"not a usable image ({err})")
            continue
        except (OSError, SyntaxError, ValueError, EOFError) as err:
            on_error(path, f"not a usable image (corrupt: {err})")
            continue
        batch.append((path, pixels))
        if len(batch) == batch_size:
            yield from flush()
    if batch:
        yield from flush()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", type=Path, nargs="+", metavar="PATH", help="image files or folders")
    parser.add_argument("--model-dir", type=Path, default=Path("models/production"),
                        help="folder with model.keras and model_card.json (default: %(default)s, "
                             "the promoted model; models/ holds the last trained one)")
    parser.add_argument("--batch-size", type=int, default=32)


def run(args: argparse.Namespace) -> None:
    from pipeline.clean import rules_from

    errors: list[Path] = []

    def report(path: Path, why: str) -> None:
        errors.append(path)
        sys.stderr.write(f"happysad predict: {path}: {why}; skipped\n")

    count = 0
    for prediction in predict(args.paths, args.model_dir, rules_from(load_params(args.params).clean),
                              args.batch_size, report):
        sys.stdout.write(json.dumps(prediction.__dict__) + "\n")
        sys.stdout.flush()
        count += 1
    logger.info("predict: %d images labelled, %d skipped", count, len(errors))
    if errors:
        raise SystemExit(1)
