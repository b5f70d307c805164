"""The ``split`` section: the seed and the share of each split."""

from __future__ import annotations

from typing import Annotated, Self

from pydantic import Field, model_validator

from pipeline.config.loader import Section
from pipeline.contracts.split import check_fractions


class SplitParams(Section):
    seed: int
    fractions: dict[str, Annotated[float, Field(gt=0.0, lt=1.0)]]

    @model_validator(mode="after")
    def _fractions(self) -> Self:
        check_fractions(self.fractions)
        return self
