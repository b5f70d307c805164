"""The runner that serves the retrain deployment: Prefect's own, stopped cleanly by SIGTERM.

Imported only once ``PREFECT_API_URL`` is set (Prefect reads its settings at import).
"""

from __future__ import annotations

from prefect.runner import Runner


class SigtermAsCtrlC(Runner):
    """Prefect's ``Runner`` (what ``flow.serve`` builds), stopped by SIGTERM as by Ctrl-C.
    Prefect's own SIGTERM handler calls the async ``stop()`` without awaiting it, so the
    runner's shutdown is skipped and Python warns "coroutine 'Runner.astop' was never
    awaited"; a KeyboardInterrupt instead unwinds ``start()`` through its ``async with``,
    which stops the runner and the runs it started."""

    def handle_sigterm(self, *args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt
