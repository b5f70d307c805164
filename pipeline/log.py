"""Logging for entry points only: library modules just call logging.getLogger(__name__)."""

from __future__ import annotations

import logging
import os


def setup_logging(verbose: bool = False) -> None:
    # TensorFlow's C++ start-up notices (oneDNN, CPU features) are noise in stage logs.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1" if verbose else "2")
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
