"""The ``promote`` section: when a challenger replaces the production model."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from pipeline.config.loader import Section
from pipeline.contracts.metrics import HEADLINE


class PromoteParams(Section):
    metric: Literal[HEADLINE]  # type: ignore[valid-type]
    margin: Annotated[float, Field(ge=0.0)]
    confidence: Annotated[float, Field(ge=0.5, lt=1.0)]  # P(challenger better) to promote
