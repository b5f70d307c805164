"""The ``clean`` section: what makes an image usable, and how near two images are copies."""

from __future__ import annotations

from typing import Annotated, Self

from pydantic import Field, model_validator

from pipeline.config.loader import Positive, Section


class ImageRules(Section):
    """What makes an image usable: the clean stage keeps only such images, and a model's card
    carries the rules it was trained under, which predict and serve-model apply to it."""

    formats: Annotated[list[str], Field(min_length=1)]
    min_side: Positive
    max_pixels: Positive
    aspect_ratio: tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]]
    min_std: Annotated[float, Field(ge=0.0)]

    @model_validator(mode="after")
    def _aspect(self) -> Self:
        if self.aspect_ratio[0] > self.aspect_ratio[1]:
            raise ValueError("aspect_ratio must be [min, max]")
        return self

    @classmethod
    def of(cls, section: ImageRules) -> ImageRules:
        """The rules alone, out of the clean section (or rules)."""
        return cls.model_validate({k: getattr(section, k) for k in cls.model_fields})


class CleanParams(ImageRules):
    near_duplicate_bits: Annotated[int, Field(ge=0, le=32)]
    near_duplicate_similarity: Annotated[float, Field(gt=0.0, le=1.0)]
    near_duplicate_block_residual: Annotated[float, Field(gt=0.0)]
    workers: Annotated[int, Field(ge=0)]
