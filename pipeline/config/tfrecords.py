"""The ``tfrecords`` section: the image size, resizing, encoding and face crop of the records."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from pipeline.config.loader import Positive, Section


class TfrecordsParams(Section):
    image_size: Annotated[int, Field(ge=8, le=2048)]
    resize: Literal["pad", "crop", "stretch"]
    encoding: Literal["jpeg", "png"]
    jpeg_quality: Annotated[int, Field(ge=1, le=100)]
    shard_size: Positive
    workers: Annotated[int, Field(ge=0)]
    # face: the largest face found (the faces section's detector) in place of the picture;
    # views: the whole picture and that face beside it, for the two-view model
    crop: Literal["none", "face", "views"]
    face_margin: Annotated[float, Field(ge=0.0, le=2.0)]  # added on each side, in face sides
    face_size: Annotated[int, Field(ge=8, le=512)]  # px of the face view (crop: views)
