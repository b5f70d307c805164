"""The ``flow`` section: the retrain flow's schedule, retries and time limits."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator

from pipeline.config.loader import Section


class FlowParams(Section):
    schedule: str
    timezone: str
    force_scrape: bool
    scrape_retries: Annotated[int, Field(ge=0)]
    retry_delay_s: Annotated[float, Field(ge=0.0)]
    stage_timeout_s: dict[str, Annotated[float, Field(gt=0.0)]]
    default_timeout_s: Annotated[float, Field(gt=0.0)]
    worker_stop_s: Annotated[float, Field(gt=0.0)]

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        import datetime

        from cronsim import CronSim, CronSimError  # the parser Prefect's own Cron schedule uses

        if len(value.split()) != 5:
            raise ValueError(f"{value!r} is not a five-field cron expression (e.g. '0 3 * * 1')")
        try:
            next(CronSim(value, datetime.datetime(2000, 1, 1)))
        except (CronSimError, StopIteration) as err:
            raise ValueError(f"{value!r} is not a valid cron expression ({err}); e.g. '0 3 * * 1' "
                             "is Mondays at 03:00") from None
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not a time zone name (IANA, e.g. UTC or "
                             "Europe/Berlin)") from None
        return value
