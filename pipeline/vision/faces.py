"""Finding faces with detectors whose weights ship inside their packages (nothing is
downloaded): OpenCV's Haar cascades, or MTCNN (the ``mtcnn`` package, on TensorFlow).

Haar: frontal, then profile (and the profile one on the mirrored image, as it knows only
one side), on a grey copy at most ``max_side`` px wide. MTCNN: its three networks on an
RGB copy of the same size, faces scored at least ``min_confidence``, with five landmarks
(eyes, nose, mouth corners), whose eyes level the crop. ``mtcnn_then_haar``: Haar's
cascades on the images where MTCNN finds none. A face is a rectangle at least
``min_face`` of the shorter side. It is a hint (cartoons, emoji and text have none; a face
in deep shade can be missed), never a verdict: the suspects stage flags images without one
for a person to look at, and the fused model then trusts the whole picture alone.
"""

from __future__ import annotations

import contextlib
import io
import math
import threading
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from pipeline.config.faces import FacesParams
from pipeline.vision.images import opencv

CASCADES = ("haarcascade_frontalface_default.xml", "haarcascade_profileface.xml")


@dataclass(frozen=True)
class Face:
    x: int
    y: int
    width: int
    height: int  # in the pixels of the image given
    # MTCNN's eye centres (left, right as seen in the image), in the same pixels; None for Haar
    eyes: tuple[tuple[float, float], tuple[float, float]] | None = None
    confidence: float = 1.0


_per_thread = threading.local()


def _cascades() -> tuple[Any, ...]:
    """OpenCV's cascades, loaded once per thread: a CascadeClassifier shared by threads fails
    (``getScaleData`` assertions) when two detect at once, as serve-model's threads do."""
    cascades = getattr(_per_thread, "cascades", None)
    if cascades is None:
        cascades = _per_thread.cascades = _load_cascades()
    return cascades


def _load_cascades() -> tuple[Any, ...]:
    cv2 = opencv()

    found = []
    for name in CASCADES:
        cascade = cv2.CascadeClassifier(cv2.data.haarcascades + name)
        if cascade.empty():
            raise RuntimeError(f"OpenCV's bundled {name} is missing from {cv2.data.haarcascades}; "
                               "reinstall opencv-python-headless (4.x: OpenCV 5 ships none)")
        found.append(cascade)
    return tuple(found)


@cache
def _mtcnn() -> Any:
    """The MTCNN networks, built once per process from the weights inside the package."""
    from pipeline.runtime.log import load_tensorflow

    load_tensorflow()
    from mtcnn import MTCNN

    return MTCNN(device="CPU:0")


def _shrunk(rgb: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    cv2 = opencv()

    height, width = rgb.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    if scale < 1.0:
        rgb = cv2.resize(rgb, (round(width * scale), round(height * scale)),
                         interpolation=cv2.INTER_AREA)
    return rgb, scale


def detect(rgb: np.ndarray, params: FacesParams) -> list[Face]:
    """Faces in an RGB uint8 image, largest first."""
    small, scale = _shrunk(rgb, params.max_side)
    side = max(1, round(params.min_face * min(small.shape[:2])))
    if params.detector == "blazeface":
        from pipeline.vision import blazeface

        found = [Face(x, y, w, h, eyes, score) for x, y, w, h, eyes, score
                 in blazeface.detect(small, params.min_confidence, side)]
    elif params.detector == "haar":
        found = _haar(small, side, params)
    else:
        found = _mtcnn_faces(small, side, params)
    if not found and params.detector == "mtcnn_then_haar":
        found = _haar(small, side, params)  # faces MTCNN misses: in grids, small, turned away
    faces = [Face(round(f.x / scale), round(f.y / scale), round(f.width / scale),
                  round(f.height / scale),
                  None if f.eyes is None else tuple((x / scale, y / scale) for x, y in f.eyes),
                  f.confidence) for f in found]
    return sorted(faces, key=lambda f: -f.width * f.height)


def _haar(rgb: np.ndarray, side: int, params: FacesParams) -> list[Face]:
    cv2 = opencv()

    grey = cv2.equalizeHist(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    boxes: list[Face] = []
    frontal, profile = _cascades()
    for cascade, image, mirrored in ((frontal, grey, False), (profile, grey, False),
                                     (profile, grey[:, ::-1], True)):
        found = cascade.detectMultiScale(np.ascontiguousarray(image), scaleFactor=params.scale_factor,
                                         minNeighbors=params.min_neighbors, minSize=(side, side))
        for x, y, w, h in (found if len(found) else []):
            boxes.append(Face(int(grey.shape[1] - x - w if mirrored else x), int(y), int(w), int(h)))
        if boxes:
            break  # frontal found one: the profile passes add nothing a flag needs
    return boxes


def _mtcnn_faces(rgb: np.ndarray, side: int, params: FacesParams) -> list[Face]:
    from pipeline.runtime.log import native_stderr_to_debug

    # it prints nothing useful to stdout, and TensorFlow's native code writes to stderr when
    # it starts (in each worker process) and each time a stage has no candidate left
    # ("Incompatible shapes: [0,24,24,3]"): all of it goes to the debug log
    with contextlib.redirect_stdout(io.StringIO()), native_stderr_to_debug("MTCNN"):
        detector = _mtcnn()
        # its own min_face_size (default 20 px) is left alone: mtcnn 1.0.0 finds nothing with
        # some other values (32 px on a 320 px portrait); smaller faces are dropped below
        found = detector.detect_faces(np.ascontiguousarray(rgb))
    faces = []
    for hit in found or []:
        x, y, w, h = (int(v) for v in hit["box"])
        if hit["confidence"] < params.min_confidence or min(w, h) < side:
            continue
        points = hit.get("keypoints", {})
        eyes = None
        if "left_eye" in points and "right_eye" in points:
            first, second = sorted((tuple(map(float, points["left_eye"])),
                                    tuple(map(float, points["right_eye"]))))
            eyes = (first, second)
        faces.append(Face(x, y, w, h, eyes, float(hit["confidence"])))
    return faces


def aligned_crop(pixels: np.ndarray, face: Face, margin: float) -> np.ndarray:
    """A square around ``face``, ``margin`` face sides added on each side, turned so that its
    eyes are level when the detector gave them (the image's edge is repeated where the square
    leaves it); with no eyes, the box with its margin, clamped to the image."""
    cv2 = opencv()

    height, width = pixels.shape[:2]
    if face.eyes is None:
        dx, dy = round(face.width * margin), round(face.height * margin)
        top, left = max(0, face.y - dy), max(0, face.x - dx)
        return pixels[top:min(height, face.y + face.height + dy),
                      left:min(width, face.x + face.width + dx)]
    (lx, ly), (rx, ry) = face.eyes
    angle = math.degrees(math.atan2(ry - ly, rx - lx))
    side = max(2, round(max(face.width, face.height) * (1 + 2 * margin)))
    cx, cy = face.x + face.width / 2, face.y + face.height / 2
    turn = cv2.getRotationMatrix2D((cx, cy), angle, 1.0)
    turn[:, 2] += (side / 2 - cx, side / 2 - cy)  # the face's centre to the square's centre
    return cv2.warpAffine(pixels, turn, (side, side), flags=cv2.INTER_AREA,
                          borderMode=cv2.BORDER_REPLICATE)


@dataclass(frozen=True)
class FaceCrop:
    """Crop to the largest face before resizing (``pipeline.vision.images.model_view``): ``margin``
    face sides added on each side; ``faces`` how to find it (a ``faces`` section)."""

    margin: float
    faces: FacesParams

    @classmethod
    def of(cls, contract: dict | None) -> FaceCrop | None:
        """From a model's or records' ``crop`` entry (None or kind none: no crop)."""
        if not contract or contract.get("kind") not in ("face", "views"):
            return None
        # models trained before the detector was a choice used Haar
        faces = {"detector": "haar", "min_confidence": 0.9, **contract["faces"]}
        return cls(float(contract["margin"]), FacesParams(**faces))

    def __call__(self, pixels: np.ndarray) -> np.ndarray | None:
        """The largest face with its margin (eyes level with MTCNN); None when there is none."""
        found = detect(pixels, self.faces)
        return aligned_crop(pixels, found[0], self.margin) if found else None
