"""The ``pretrain`` section: the face network trained on a face set in ``data/pretrain``, the
start ``train.init_from: pretrain`` warms a photo model from."""

from __future__ import annotations

from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.config.loader import Positive, Section
from pipeline.config.train import TrainParams, check_depth
from pipeline.contracts.split import check_fractions


class PretrainParams(Section):
    image_size: Annotated[int, Field(ge=8, le=512)]  # px, square; FER-2013's faces are 48
    min_side: Positive            # px; smaller files are left out (FER-2013's are 48)
    fractions: dict[str, Annotated[float, Field(gt=0.0, lt=1.0)]]  # train / val / test
    jpeg_quality: Annotated[int, Field(ge=1, le=100)]
    workers: Annotated[int, Field(ge=0)]
    train: TrainParams            # the face network and its fit, as the train section's

    @model_validator(mode="after")
    def _fits(self) -> Self:
        check_fractions(self.fractions)
        if self.train.init_from == "pretrain":
            raise ValueError("train.init_from: the face network cannot start from itself")
        check_depth(self.image_size, self.train)
        return self


class ScrapeClasses(BaseModel):
    """Only the class names of the scrape section: the folders of data/pretrain to read."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    classes: dict[str, Any]
