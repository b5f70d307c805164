"""The ``faces`` section: the face detector the face crop and the no-face flag share."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from pipeline.config.loader import Section


class FacesParams(Section):
    max_side: Annotated[int, Field(ge=64, le=4096)]  # px of the grey copy searched
    min_face: Annotated[float, Field(gt=0.0, le=1.0)]  # of the shorter side
    scale_factor: Annotated[float, Field(gt=1.0, le=2.0)]
    min_neighbors: Annotated[int, Field(ge=0, le=50)]
