"""End-to-end checks: the whole DAG through DVC, the Prefect flows and server, the browser, Label
Studio, whole stages killed. Every test here is marked ``slow`` (``make test-fast`` skips them)."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.fspath).resolve().parents:
            item.add_marker(pytest.mark.slow)
