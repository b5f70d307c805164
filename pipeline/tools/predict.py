"""``happysad predict PATH...``: label images with the saved model, one JSON line each.

Files or folders (searched recursively) in; for each image a line with its path,
label and the probability of that label. Images go through the clean stage's
checks and the tfrecords stage's resize as the model card records them (not as
params.yaml says today), so the model sees what it was trained on. A file that
is not a usable image gets a one-line error on stderr and the rest still run;
the exit status is then 1. The model runs on LiteRT (the save stage's
``model.tflite``: no TensorFlow import, so the first answer comes in a second or
two) and falls back to Keras; the label's class names and threshold come from
the model card.

Each line also says whether a face was found (``face_found``), by the model's own
detector when it cuts faces (its input contract), else by the face finder its card
records (params.yaml's ``faces`` when it was saved). With ``--require-face`` an
image with no face gets no label (``label`` null, and the ``abstained`` reason):
the model card says how much less its labels are worth there.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.contracts.export import read_card
from pipeline.runtime.errors import UserError
from pipeline.runtime.files import display_path, read_regular

if TYPE_CHECKING:  # numpy and the image code load only once there is an image to label,
    # so a missing model is said before they are imported
    from pipeline.config.clean import ImageRules
    from pipeline.config.faces import FacesParams
    from pipeline.vision.images import Views

logger = logging.getLogger(__name__)
SUFFIXES = {".jpg", ".jpeg", ".jpe", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".mpo"}


@dataclass(frozen=True)
class Prediction:
    path: str
    label: str | None  # None: abstained (see ``abstained``)
    probability: float | None
    probabilities: dict[str, float] | None
    face_found: bool
    abstained: str | None = None


def image_files(paths: list[Path]) -> Iterator[Path]:
    """The files named, and image files under the folders named, in a stable order. Under a
    folder, anything that is neither a file nor a folder (a FIFO, a socket) comes too, so
    that it is reported rather than skipped in silence; reading it is refused."""
    for path in paths:
        if path.is_dir():
            for found in sorted(p for p in path.rglob("*") if not p.is_dir()):
                if not found.is_file() or found.suffix.lower() in SUFFIXES:
                    yield found
        else:
            yield path  # named explicitly: tried whatever its suffix, so mistakes are reported


def _skip(path: Path, why: str) -> None:
    logger.warning("%s: %s; skipped", display_path(path), why)


def predict(paths: list[Path], model_dir: Path, batch_size: int = 32,
            on_error: Callable[[Path, str], None] = _skip, threshold: float | None = None,
            runtime: str = "auto", look_for_faces: bool = True, require_face: bool = False,
            legacy: Callable[[], tuple[ImageRules, FacesParams]] | None = None
            ) -> Iterator[Prediction]:
    """Predictions in input order; each unusable file goes to ``on_error`` and is skipped.
    Everything comes from the model's card: the label is its class at its threshold (unless
    ``threshold`` is given), the images refused are those its rules refuse, and
    ``look_for_faces`` says ``face_found`` with its face finder when the model cuts no faces
    itself; ``require_face``: no label for an image with no face. ``legacy``: the rules for a
    card saved before cards carried them."""
    read_card(model_dir)
    import numpy as np

    from pipeline.ml.labeller import Labeller
    from pipeline.vision.images import UnusableImageError

    labeller = Labeller.load(model_dir, look_for_faces, threshold, runtime, require_face, legacy)
    batch: list[tuple[Path, Views]] = []

    def flush() -> Iterator[Prediction]:
        probs = labeller.probabilities([v for _, v in batch])
        for (path, views), p in zip(batch, probs, strict=True):
            if not np.isfinite(p):  # a broken model: say so, never print NaN (not JSON)
                on_error(path, f"the model gives a non-finite probability ({p}); it is broken, "
                               "train it again")
                continue
            answer = labeller.answer(float(p), bool(views.face_found))
            yield Prediction(display_path(path), **answer.__dict__)
        batch.clear()

    for path in image_files(paths):
        try:
            data = read_regular(path)  # a FIFO is refused, not waited on
        except OSError as err:
            on_error(path, f"cannot read ({err.strerror or err})")
            continue
        try:
            views = labeller.views(data)
        except UnusableImageError as err:
            on_error(path, f"not a usable image ({err})")
            continue
        batch.append((path, views))
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
    parser.add_argument("--threshold", type=float, default=None,
                        help="probability of the second class from which it is the label "
                             "(default: the model card's, evaluate.threshold when it was trained)")
    parser.add_argument("--runtime", choices=("auto", "litert", "keras"), default="auto",
                        help="auto: the LiteRT export when there, else Keras (default: %(default)s)")
    parser.add_argument("--require-face", action="store_true",
                        help="no label for an image where no face is found: label null, with "
                             "the reason in `abstained`")


def run(args: argparse.Namespace) -> None:
    errors: list[Path] = []

    def report(path: Path, why: str) -> None:
        errors.append(path)
        sys.stderr.write(f"happysad predict: {display_path(path)}: {why}; skipped\n")

    count = abstained = 0
    if args.threshold is not None and not 0.0 < args.threshold < 1.0:
        raise UserError(f"--threshold {args.threshold}: must be between 0 and 1")
    read_card(args.model_dir)  # a missing model is said at once
    from pipeline.ml.labeller import params_rules

    for prediction in predict(args.paths, args.model_dir, args.batch_size, report, args.threshold,
                              args.runtime, True, args.require_face, params_rules(args.params)):
        sys.stdout.write(json.dumps(prediction.__dict__) + "\n")
        sys.stdout.flush()
        count += prediction.label is not None
        abstained += prediction.label is None
    logger.info("predict: %d images labelled, %d without a label (no face), %d skipped", count,
                abstained, len(errors))
    if errors:
        raise SystemExit(1)
