"""A shipped model and everything it takes to label one image with it, all out of its card:
the class names, threshold and input contract, the image rules it was trained under (the
clean stage's checks) and the face finder it was shipped with; never the checkout's current
params, so editing params.yaml for the next training changes nothing a running model does.
``happysad predict`` and ``happysad serve-model`` both label through a :class:`Labeller`, so a
file and an upload of its bytes get the same answer."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.config.clean import ImageRules
from pipeline.contracts.export import read_card
from pipeline.ml.inference import Runtime, load_runtime
from pipeline.runtime.errors import UserError
from pipeline.vision.faces import FaceCrop
from pipeline.vision.images import UnusableImageError, Views, model_views, open_rgb, stacked

if TYPE_CHECKING:
    from pipeline.config.faces import FacesParams

NO_FACE = "no face found (--require-face)"
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Answer:
    """One image's label at the threshold, or none (``abstained`` says why)."""

    label: str | None
    probability: float | None  # of ``label``
    probabilities: dict[str, float] | None  # by class name
    face_found: bool | None  # None: not looked for (no detector given)
    abstained: str | None = None


def card_rules(card: dict, legacy: Callable[[], tuple[ImageRules, FacesParams]] | None = None
               ) -> tuple[ImageRules, FacesParams]:
    """The image rules and the face finder a model was shipped with (its card's ``accepts``
    and ``faces``); for an older card without them, ``legacy()``, or a one-line error."""
    from pipeline.config.faces import FacesParams
    from pipeline.config.loader import validate
    from pipeline.contracts.export import CARD_FILE

    if "accepts" in card and "faces" in card:
        return (validate(Path(f"{CARD_FILE} accepts"), ImageRules, card["accepts"]),
                validate(Path(f"{CARD_FILE} faces"), FacesParams, card["faces"]))
    if legacy is None:
        raise UserError("the model card has no image rules (saved before cards carried them); "
                        "save the model again (dvc repro save)")
    return legacy()


def params_rules(params_file: Path) -> Callable[[], tuple[ImageRules, FacesParams]]:
    """For a card saved before cards carried their own rules: ``params_file``'s clean and faces
    sections (only those: another section's error does not stop a model), with a warning."""
    def rules() -> tuple[ImageRules, FacesParams]:
        from pipeline.config.clean import CleanParams
        from pipeline.config.faces import FacesParams
        from pipeline.config.loader import load_sections

        logger.warning("the model card was saved before cards carried their image rules; "
                       "using %s's clean and faces sections (save or promote a newer model)",
                       params_file)
        sections = load_sections(params_file, clean=CleanParams, faces=FacesParams)
        return ImageRules.of(sections.clean), sections.faces
    return rules


class Labeller:
    """Bytes of an image in, an :class:`Answer` out, as the model card says.

    ``faces``: the detector that says ``face_found`` when the model cuts no faces itself (its
    contract has no crop; without one, ``face_found`` is None: not looked for);
    ``require_face``: no label for an image with no face.
    """

    def __init__(self, card: dict, model: Runtime, rules: ImageRules,
                 faces: FacesParams | None = None, threshold: float | None = None,
                 require_face: bool = False) -> None:
        self.card = card
        self.model = model
        self.rules = rules
        self.faces = faces
        self.require_face = require_face
        self.contract = card["input"]
        self.class_names: list[str] = list(self.contract["class_names"])
        self.threshold = float(card["threshold"]) if threshold is None else threshold
        self.crop = FaceCrop.of(self.contract.get("crop"))  # the model's own face crop, if any

    @classmethod
    def of(cls, card: dict, model: Runtime, look_for_faces: bool = False,
           threshold: float | None = None, require_face: bool = False,
           legacy: Callable[[], tuple[ImageRules, FacesParams]] | None = None) -> Labeller:
        """The labeller a card describes; ``look_for_faces``: say ``face_found`` with the card's
        face finder when the model cuts no faces itself. ``legacy``: the rules and finder for
        a card saved before cards carried their own (params.yaml's, with a warning)."""
        rules, faces = card_rules(card, legacy)
        return cls(card, model, rules, faces if look_for_faces or require_face else None,
                   threshold, require_face)

    @classmethod
    def load(cls, model_dir: Path, look_for_faces: bool = False, threshold: float | None = None,
             runtime: str = "auto", require_face: bool = False,
             legacy: Callable[[], tuple[ImageRules, FacesParams]] | None = None) -> Labeller:
        """The model in ``model_dir`` (its card, then its LiteRT export or Keras model)."""
        card = read_card(model_dir)
        return cls.of(card, load_runtime(model_dir, runtime), look_for_faces, threshold,
                      require_face, legacy)

    def views(self, data: bytes) -> Views:
        """An image's views as the model's input contract wants them (as tfrecords makes
        them), after the clean stage's checks; raises :class:`UnusableImageError`."""
        from pipeline.contracts.features import face_size

        try:
            rgb = open_rgb(data, self.rules)
            views = model_views(data, self.contract["image_size"], self.contract["resize"],
                                crop=self.crop, face_size=face_size(self.contract))
        except UnusableImageError:
            raise
        except (OSError, SyntaxError, ValueError, EOFError) as err:
            raise UnusableImageError("corrupt", str(err) or type(err).__name__) from None
        if views.face_found is None:  # the model cuts no faces: ask the detector
            from pipeline.vision.faces import detect

            if self.faces is None:
                return views
            return Views(views.pixels, None, bool(detect(np.asarray(rgb), self.faces)))
        return views

    def probabilities(self, views: list[Views]) -> np.ndarray:
        """The probability of class 1 for each image's views, in one model call."""
        return self.model(stacked(views))

    def answer(self, p: float, face_found: bool | None) -> Answer:
        """The label at the threshold for class-1 probability ``p``, or none when a face is
        required and missing."""
        if self.require_face and not face_found:
            return Answer(None, None, None, face_found, NO_FACE)
        label = int(p >= self.threshold)
        names = self.class_names
        return Answer(names[label], round(p if label else 1 - p, 6),
                      {names[0]: round(1 - p, 6), names[1]: round(p, 6)}, face_found)
