"""Logging for entry points only: library modules just call logging.getLogger(__name__)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator

logger = logging.getLogger(__name__)


def setup_logging(verbose: bool = False) -> None:
    """INFO by default; DEBUG with ``-v`` or when the flow runs the stage with ``--verbose``."""
    verbose = verbose or os.environ.get("HAPPYSAD_VERBOSE") == "1"
    # TensorFlow's C++ start-up notices (oneDNN, CPU features) are noise in stage logs.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1" if verbose else "2")
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


@contextlib.contextmanager
def native_stderr_to_debug(what: str) -> Iterator[None]:
    """Hold what native code writes to file descriptor 2 inside the block (TensorFlow's and
    LiteRT's C++ start-up notices, which no Python logging setting reaches) and log it at
    debug level; if the block fails, it is logged as a warning instead, so nothing is lost."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no usable stderr (a daemon): nothing to hold back
        yield
        return
    failed = False
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            text = held.read().decode("utf-8", "replace").strip()
            if text:
                logger.log(logging.WARNING if failed else logging.DEBUG, "%s: %s", what, text)


def load_tensorflow() -> None:
    """Import TensorFlow and Keras once, their native start-up notices at debug level."""
    if "keras" in sys.modules:
        return
    with native_stderr_to_debug("TensorFlow start-up"):
        import keras  # noqa: F401
        import tensorflow  # noqa: F401


def clock(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    if minutes >= 60:
        return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}"
    return f"{minutes}:{seconds:02d}"
