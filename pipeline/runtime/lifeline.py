"""No orphans: a child process ends with the process that started it, even after ``kill -9``.

Three ways, all Linux-only (elsewhere they do nothing): ``parent_death_signal`` is a
``preexec_fn`` that asks the kernel to signal the child when its parent dies
(``PR_SET_PDEATHSIG``); ``die_with_parent`` does the same from inside a process pool's
worker; ``die_with_dvc`` is what a stage that DVC runs calls first, so
that killing ``dvc`` ends the stage too. DVC runs a stage's cmd through ``$SHELL -c``,
and some shells (dash, Debian's /bin/sh) stay in between: then a thread watches DVC's
process instead.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

SHELLS = frozenset({"sh", "dash", "bash", "zsh", "ksh", "fish", "busybox"})


def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    return ctypes.CDLL(None).prctl


def parent_death_signal(sig: signal.Signals = signal.SIGTERM,
                        reset: tuple[signal.Signals, ...] = ()) -> Callable[[], None] | None:
    """A ``preexec_fn``: the child gets ``sig`` when this process dies. Resolved here, before
    the fork: the child only calls it (no import, no lock). Signals in ``reset`` go back to
    their default in the child (a parent that ignores them must not pass that on)."""
    prctl = _prctl()
    if prctl is None:
        return None
    parent = os.getpid()

    def in_child() -> None:
        for each in reset:
            signal.signal(each, signal.SIG_DFL)
        prctl(1, int(sig))  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the line above: stop at once
            os.kill(os.getpid(), sig)

    return in_child


def die_with_parent(parent: int) -> None:
    """A process pool's ``initializer`` (pass this process's pid): the worker gets SIGKILL when
    its parent dies, so a stage killed with ``kill -9`` leaves no worker writing into a pipe
    nobody reads (and, with the workers gone, multiprocessing's resource tracker ends too)."""
    prctl = _prctl()
    if prctl is None:
        return
    prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the line above
        os.kill(os.getpid(), signal.SIGKILL)


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _parent_and_start(pid: int) -> tuple[int, str] | None:
    """A process's parent pid and start time (which tells it from a later one of that pid)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), fields[19]


def _is_shell_c(pid: int) -> bool:
    argv = _cmdline(pid)
    return bool(argv) and Path(argv[0]).name in SHELLS and "-c" in argv[1:3]


def die_with_dvc(poll_s: float = 1.0) -> None:
    """In a stage run by DVC (``DVC_STAGE`` is set): SIGKILL this process when DVC's ends.
    SIGKILL because a stage may ignore SIGTERM (the scrape stage does while its crawl
    pauses); what the stage started has lifelines of its own (the crawler pauses)."""
    prctl = _prctl()
    if prctl is None or "DVC_STAGE" not in os.environ:
        return
    dvc = os.getppid()
    while _is_shell_c(dvc):
        found = _parent_and_start(dvc)
        if found is None:
            return
        dvc = found[0]
    first = _parent_and_start(dvc)
    if first is None:
        os.kill(os.getpid(), signal.SIGKILL)  # DVC is gone already
    if dvc <= 1:  # no DVC above us after all
        return
    if dvc == os.getppid():
        prctl(1, int(signal.SIGKILL))
        if os.getppid() != dvc:
            os.kill(os.getpid(), signal.SIGKILL)
        return

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            now = _parent_and_start(dvc)
            if now is None or now[1] != first[1]:
                os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="die-with-dvc", daemon=True).start()
