"""The ``suspects`` section: what makes an image a suspect, and how flags weigh."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from pipeline.config.loader import Section
from pipeline.contracts.suspects import SUSPECT_FLAGS


class SuspectsParams(Section):
    confident_mistake: Annotated[float, Field(gt=0.5, lt=1.0)]  # p(the wrong class), test images
    weights: dict[Literal[SUSPECT_FLAGS], Annotated[float, Field(ge=0.0)]]  # type: ignore[valid-type]
    workers: Annotated[int, Field(ge=0)]

    @field_validator("weights")
    @classmethod
    def _every_flag(cls, weights: dict[str, float]) -> dict[str, float]:
        missing = set(SUSPECT_FLAGS) - set(weights)
        if missing:
            raise ValueError(f"give a weight for {', '.join(sorted(missing))}")
        return weights
