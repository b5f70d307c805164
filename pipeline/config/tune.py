"""The ``tune`` section: the search's budget, metric and space over the train keys."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import Field, field_validator, model_validator

from pipeline.config.crossval import CrossvalParams
from pipeline.config.loader import Positive, Section
from pipeline.config.train import AugmentParams, TrainParams


class Dimension(Section):
    """One knob of the search: a range (``low``..``high``, ``log`` for a log scale) or ``choices``."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        if (self.choices is None) == (self.low is None or self.high is None):
            raise ValueError("give either low and high, or choices")
        if self.choices is not None and not self.choices:
            raise ValueError("choices is empty")
        if self.low is not None and self.high is not None:
            if self.low > self.high:
                raise ValueError("low must not exceed high")
            if self.log and self.low <= 0:
                raise ValueError("a log scale needs low > 0")
        return self


class TuneParams(Section):
    trials: Positive                  # the budget: trials in all, counting a resumed search's
    parallel: Positive                # trials at once (each its own process)
    random_trials: Annotated[int, Field(ge=0)] = 4  # after trial 0, before TPE takes over
    metric: Literal["val_loss", "val_accuracy", "val_auc"]
    # > 1: score each trial by grouped k-fold cross-validation of the train and val images
    # (pooled out-of-fold figures) instead of the one val split; k times the work
    cv_folds: Annotated[int, Field(ge=0, le=20)]
    dask_address: str = ""            # tcp://host:8786: trials run on that Dask cluster
    experiment: bool                  # run the best params through the DAG as a DVC experiment
    space: Annotated[dict[str, Dimension], Field(min_length=1)]

    @field_validator("cv_folds")
    @classmethod
    def _folds(cls, value: int) -> int:
        return CrossvalParams._two_or_off(value)

    @field_validator("space")
    @classmethod
    def _train_keys(cls, space: dict[str, Dimension]) -> dict[str, Dimension]:
        for key in space:
            head, _, rest = key.partition(".")
            model = TrainParams.model_fields.get(head)
            if model is None or (rest and rest not in AugmentParams.model_fields) or (
                    head == "augment" and not rest):
                raise ValueError(f"{key!r} is not a train key (e.g. dropout, augment.zoom)")
        return space
