"""The ``serve_model`` section: what ``happysad serve-model`` accepts and how it batches and swaps."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from pipeline.config.loader import Positive, Section


class ServeModelParams(Section):
    max_body_bytes: Annotated[int, Field(ge=1024)]   # a larger request gets 413
    max_instances: Annotated[int, Field(ge=1, le=1024)]  # images in one request (413 beyond)
    max_batch: Annotated[int, Field(ge=1, le=256)]   # images in one model call
    max_wait_ms: Annotated[float, Field(ge=0.0, le=1000.0)]  # for more images to join a batch
    prepare_threads: Annotated[int, Field(ge=0)]     # decode and resize; 0 = one per core
    poll_s: Annotated[float, Field(gt=0.0, le=3600.0)]  # how often the model folder is checked
    settle_polls: Positive                           # unchanged checks before a new model loads
    read_timeout_s: Annotated[float, Field(gt=0.0, le=3600.0)]  # a request's arrival, whole
    max_connections: Annotated[int, Field(ge=1, le=100_000)]  # open at once (more are closed)
