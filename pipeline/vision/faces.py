"""Finding faces with the detectors that ship inside OpenCV (nothing is downloaded).

OpenCV's Haar cascades, frontal then profile (and the profile one on the mirrored
image, as it knows only one side), on a grey copy at most ``max_side`` px wide.
A face is a rectangle at least ``min_face`` of the shorter side. It is a hint
(cartoons, emoji and text have none; a face in deep shade can be missed), never a
verdict: the suspects stage flags images without one for a person to look at.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from pipeline.config.faces import FacesParams

CASCADES = ("haarcascade_frontalface_default.xml", "haarcascade_profileface.xml")


@dataclass(frozen=True)
class Face:
    x: int
    y: int
    width: int
    height: int  # in the pixels of the image given


@cache
def _cascades() -> tuple[Any, ...]:
    import cv2

    found = []
    for name in CASCADES:
        cascade = cv2.CascadeClassifier(cv2.data.haarcascades + name)
        if cascade.empty():
            raise RuntimeError(f"OpenCV's bundled {name} is missing from {cv2.data.haarcascades}; "
                               "reinstall opencv-python-headless (4.x: OpenCV 5 ships none)")
        found.append(cascade)
    return tuple(found)


def detect(rgb: np.ndarray, params: FacesParams) -> list[Face]:
    """Faces in an RGB uint8 image, largest first."""
    import cv2

    height, width = rgb.shape[:2]
    scale = min(1.0, params.max_side / max(height, width))
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    if scale < 1.0:
        grey = cv2.resize(grey, (round(width * scale), round(height * scale)),
                          interpolation=cv2.INTER_AREA)
    grey = cv2.equalizeHist(grey)
    side = max(1, round(params.min_face * min(grey.shape)))
    boxes: list[tuple[int, int, int, int]] = []
    frontal, profile = _cascades()
    for cascade, image, mirrored in ((frontal, grey, False), (profile, grey, False),
                                     (profile, grey[:, ::-1], True)):
        found = cascade.detectMultiScale(np.ascontiguousarray(image), scaleFactor=params.scale_factor,
                                         minNeighbors=params.min_neighbors, minSize=(side, side))
        for x, y, w, h in (found if len(found) else []):
            boxes.append((grey.shape[1] - x - w if mirrored else x, y, w, h))
        if boxes:
            break  # frontal found one: the profile passes add nothing a flag needs
    faces = [Face(round(x / scale), round(y / scale), round(w / scale), round(h / scale))
             for x, y, w, h in boxes]
    return sorted(faces, key=lambda f: -f.width * f.height)


@dataclass(frozen=True)
class FaceCrop:
    """Crop to the largest face before resizing (``pipeline.vision.images.model_view``): ``margin``
    face sides added on each side; ``detector`` the faces section of params.yaml, as items."""

    margin: float
    detector: tuple[tuple[str, float], ...]

    @classmethod
    def of(cls, contract: dict | None) -> FaceCrop | None:
        """From a model's or records' ``crop`` entry (None or kind none: no crop)."""
        if not contract or contract.get("kind") != "face":
            return None
        return cls(float(contract["margin"]), tuple(sorted(contract["faces"].items())))

    def __call__(self, pixels: np.ndarray) -> np.ndarray | None:
        """The largest face with its margin, clamped to the image; None when there is none."""
        found = detect(pixels, FacesParams(**dict(self.detector)))
        if not found:
            return None
        face = found[0]
        height, width = pixels.shape[:2]
        dx, dy = round(face.width * self.margin), round(face.height * self.margin)
        top, left = max(0, face.y - dy), max(0, face.x - dx)
        bottom = min(height, face.y + face.height + dy)
        right = min(width, face.x + face.width + dx)
        return pixels[top:bottom, left:right]
