"""The ``crossval`` section: how many folds (0 = off)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator

from pipeline.config.loader import Section


class CrossvalParams(Section):
    folds: Annotated[int, Field(ge=0, le=20)]  # 0 = off

    @field_validator("folds")
    @classmethod
    def _two_or_off(cls, value: int) -> int:
        if value == 1:
            raise ValueError("1 fold holds nothing out; use 0 (off) or 2 and up (5 is usual)")
        return value
