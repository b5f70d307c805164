"""The ``evaluate`` section: the threshold, the intervals and what the test report shows."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from pipeline.config.loader import Positive, Section


class EvaluateParams(Section):
    threshold: Annotated[float, Field(gt=0.0, lt=1.0)]
    worst_mistakes: Annotated[int, Field(ge=0, le=100)]
    batch_size: Positive
    bootstrap_resamples: Annotated[int, Field(ge=100, le=100_000)]
    confidence: Annotated[float, Field(gt=0.5, lt=1.0)]  # of the intervals


# The test metrics by name, in one place: evaluate's headline file, the model card, promotion
