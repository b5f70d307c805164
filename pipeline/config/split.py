"""The ``split`` section: the seed and the share of each split."""

from __future__ import annotations

from typing import Annotated, Self

from pydantic import Field, model_validator

from pipeline.config.loader import Section
from pipeline.contracts.split import SPLITS


class SplitParams(Section):
    seed: int
    fractions: dict[str, Annotated[float, Field(gt=0.0, lt=1.0)]]

    @model_validator(mode="after")
    def _fractions(self) -> Self:
        if set(self.fractions) != set(SPLITS):
            raise ValueError(f"fractions must name exactly {', '.join(SPLITS)}")
        if abs(sum(self.fractions.values()) - 1.0) > 1e-6:
            raise ValueError("fractions must add up to 1")
        return self
