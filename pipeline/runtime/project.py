"""Where a command finds the project's own files: relative to the folder it runs in, the
repository's root (where ``dvc repro``, the Makefile and the flows run every command)."""

from __future__ import annotations

from pathlib import Path

DEFAULT_PARAMS = Path("params.yaml")  # every command's --params, unless given
