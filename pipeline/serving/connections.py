"""The connections serve-model keeps: each request must arrive whole within
``serve_model.read_timeout_s``, and at most ``serve_model.max_connections`` are open at once (fewer when the
process may open fewer files), so slow or idle clients cannot hold every socket.

A connection over the cap is closed as it opens; one that is still sending its request when
its time is up is closed. Both are counted and said in one log line a few seconds apart at
most, never a line or a traceback per connection. (Before: 300 slow clients under
``ulimit -n 256`` made every ``/health`` time out, then 202,661 "Too many open files"
tracebacks in 40 s.)
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections import Counter
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger(__name__)

SAY_EVERY_S = 5.0
FILES_KEPT = 64  # for the model, its threads, logs and the listening socket


def connection_cap(max_connections: int) -> int:
    """``max_connections``, or fewer where the file limit would be reached first."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return max_connections
    return max(1, min(max_connections, soft - max(FILES_KEPT, soft // 4)))


class Refusals:
    """Connections closed by the guard, said in one line at most every ``SAY_EVERY_S``."""

    def __init__(self, cap: int, read_timeout_s: float) -> None:
        self.cap, self.read_timeout_s = cap, read_timeout_s
        self.counts: Counter[str] = Counter()
        self.said = 0.0
        self.pending: asyncio.TimerHandle | None = None

    def add(self, why: str) -> None:
        """Count one; say the counts now, or once ``SAY_EVERY_S`` has passed since the last."""
        self.counts[why] += 1
        wait = SAY_EVERY_S - (time.monotonic() - self.said)
        if wait <= 0:
            self.say()
        elif self.pending is None:
            self.pending = asyncio.get_running_loop().call_later(wait, self.say)

    def say(self) -> None:
        if self.pending is not None:
            self.pending.cancel()
            self.pending = None
        if not self.counts:
            return
        parts = []
        if self.counts["cap"]:
            parts.append(f"{self.counts['cap']} over the cap of {self.cap} open connections")
        if self.counts["slow"]:
            parts.append(f"{self.counts['slow']} that had not sent a whole request in "
                         f"{self.read_timeout_s:g} s")
        logger.warning("serve-model: closed %s (serve_model.max_connections, serve_model.read_timeout_s)",
                       " and ".join(parts))
        self.counts.clear()
        self.said = time.monotonic()


def guarded_protocol(cap: int, read_timeout_s: float, refusals: Refusals) -> type[H11Protocol]:
    """uvicorn's h11 protocol with the cap and the read timeout."""

    class Guarded(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > cap:
                refusals.add("cap")
                transport.abort()
                return
            self._arm()

        def _arm(self) -> None:
            if self._deadline is None:
                self._deadline = self.loop.call_later(read_timeout_s, self._too_slow)

        def _reading(self) -> bool:
            """Whether a request is due or under way and has not all arrived."""
            return self.conn.their_state in (h11.IDLE, h11.SEND_BODY)

        def data_received(self, data: bytes) -> None:
            self._arm()
            super().data_received(data)
            if not self._reading() and self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self._deadline is not None:  # the next request's clock starts with its bytes
                self._deadline.cancel()
                self._deadline = None

        def _too_slow(self) -> None:
            self._deadline = None
            if self._reading() and not self.transport.is_closing():
                refusals.add("slow")
                self.transport.abort()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
            super().connection_lost(exc)

    return Guarded


class _AcceptErrors(logging.Filter):
    """asyncio's "socket.accept() out of system resource" once a minute, without a traceback."""

    def __init__(self) -> None:
        super().__init__()
        self.said = 0.0

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("socket.accept() out of system resource"):
            return True
        if time.monotonic() - self.said < 60:
            return False
        self.said = time.monotonic()
        record.msg, record.args = ("serve-model: the process is out of open files; new "
                                   "connections wait (lower serve_model.max_connections or raise "
                                   "ulimit -n)"), ()
        record.exc_info = record.exc_text = None
        return True


def quiet_accept_errors() -> None:
    logging.getLogger("asyncio").addFilter(_AcceptErrors())
