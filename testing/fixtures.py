"""Small things several test modules build: a face on a canvas, a training run that is
interrupted after a given epoch."""

from __future__ import annotations

import numpy as np


def face_on_a_canvas() -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A demo face (one OpenCV's cascade finds) pasted right of centre on a grey canvas three
    times its size, and where it was pasted (top, left, bottom, right)."""
    from demo.faces import draw_face

    face = np.asarray(draw_face(np.random.default_rng(0), "happy").convert("RGB"))
    height, width = face.shape[:2]
    canvas = np.full((3 * height, 3 * width, 3), 128, np.uint8)
    canvas[height:2 * height, 2 * width:] = face
    return canvas, (height, 2 * width, 2 * height, 3 * width)


def interrupted_after(epoch: int) -> type:
    """train's epoch log, raising KeyboardInterrupt once ``epoch`` (0-based) is logged."""
    from pipeline.ml.callbacks import EpochLog

    class CrashingLog(EpochLog):
        def on_epoch_end(self, done: int, logs: dict | None = None) -> None:
            super().on_epoch_end(done, logs)
            if done == epoch:
                raise KeyboardInterrupt

    return CrashingLog
