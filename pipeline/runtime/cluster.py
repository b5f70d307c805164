"""The data stages' per-image map over a Dask cluster, when ``HAPPYSAD_DASK_ADDRESS`` names its
scheduler, with every wait bounded and every failure one line.

Plain ``dvc repro`` has no timeout, so nothing here may wait for ever: an address that is
not one is refused before any connection; whatever answers there must greet us as a Dask
scheduler does (it speaks first) within ``HAPPYSAD_DASK_WAIT_S`` seconds (60 by default);
and once no worker has been connected for that long, the stage stops and says how far it
got. A worker checks that it runs in a checkout of the project before it reads a path,
since the jobs name files relative to one.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from tqdm import tqdm

from pipeline.runtime.errors import UserError

logger = logging.getLogger(__name__)

DASK_ADDRESS = "HAPPYSAD_DASK_ADDRESS"  # e.g. tcp://10.0.0.5:8786; empty: local processes
WAIT_ENV = "HAPPYSAD_DASK_WAIT_S"  # how long to wait for the scheduler's greeting or a worker
DEFAULT_WAIT_S = 60.0
CHUNK = 16  # images a Dask task labels: its scheduling costs ~1 ms, an image 1-40 ms
POLL_S = 2.0
_ADDRESS = re.compile(r"(?:(?P<scheme>tcp|tls)://)?(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)"
                      r":(?P<port>\d{1,5})")
_OTHER_SCHEMES = ("inproc", "ucx", "ws", "wss")  # addresses with no TCP greeting to check
_CHECKOUT_MARKS = ("dvc.yaml", "params.yaml", "pipeline")

Job = TypeVar("Job")
Result = TypeVar("Result")


class NotInCheckoutError(RuntimeError):
    """A Dask worker runs outside a checkout of the project, so the jobs' paths miss."""


def wait_s() -> float:
    try:
        return max(float(os.environ.get(WAIT_ENV, DEFAULT_WAIT_S)), 1.0)
    except ValueError:
        raise UserError(f"{WAIT_ENV}={os.environ[WAIT_ENV]!r} is not a number of seconds") from None


def checked_address(address: str, setting: str = DASK_ADDRESS) -> str:
    """``address`` as Dask takes it, or one line saying what a scheduler's address looks like;
    ``setting`` is where the user gave it."""
    scheme = address.partition("://")[0] if "://" in address else ""
    if scheme in _OTHER_SCHEMES and address.partition("://")[2]:
        return address  # distributed reads these itself (an in-process cluster, UCX, websockets)
    match = _ADDRESS.fullmatch(address)
    if match is None or not 0 < int(match["port"]) < 65536:
        raise UserError(f"{setting}={address!r} is not a Dask scheduler's address: give it "
                        "as tcp://HOST:PORT (what `dask scheduler` prints), or unset "
                        f"{setting} to use this machine's cores")
    return address if match["scheme"] else f"tcp://{address}"


def scheduler_address(address: str, setting: str = DASK_ADDRESS) -> str:
    """``address`` checked, and greeted as a Dask scheduler within ``HAPPYSAD_DASK_WAIT_S``: for
    every door that takes one (the data stages, the tune flow)."""
    address = checked_address(address, setting)
    greet(address, wait_s(), setting)
    return address


def greet(address: str, timeout_s: float, setting: str = DASK_ADDRESS) -> None:
    """Check that a Dask scheduler answers at a tcp:// ``address``: it sends its handshake,
    a length-prefixed message, as soon as a connection opens. (distributed's own client waits
    for ever on a server that accepts and says nothing, such as an HTTP server.)"""
    match = _ADDRESS.fullmatch(address)
    if match is None or match["scheme"] != "tcp":
        return  # tls: distributed checks the certificate and the greeting itself
    host = match["host"].strip("[]")
    try:
        with socket.create_connection((host, int(match["port"])), timeout=timeout_s) as conn:
            conn.settimeout(timeout_s)
            greeting = b""
            while len(greeting) < 8 and (part := conn.recv(8 - len(greeting))):
                greeting += part
    except TimeoutError:
        raise UserError(f"{setting}={address}: something accepts connections there, but it "
                        f"is not a Dask scheduler (it said nothing in {timeout_s:.0f} s); give "
                        "the address `dask scheduler` prints") from None
    except OSError as err:
        raise UserError(f"{setting}={address}: no Dask scheduler answers "
                        f"({err.strerror or err}); start one (dask scheduler), or unset "
                        f"{setting} to use this machine's cores") from None
    length = struct.unpack("<Q", greeting)[0] if len(greeting) == 8 else 0
    if not 8 <= length <= 2**24:
        raise UserError(f"{setting}={address}: what answers there is not a Dask scheduler "
                        f"(it began with {greeting!r}); give the address `dask scheduler` prints")


def run_chunk(fn: Callable[[Job], Result], chunk: list[Job]) -> list[Result]:
    """Run on a Dask worker: ``fn`` over ``chunk``, once the worker knows it is in a checkout."""
    missing = [mark for mark in _CHECKOUT_MARKS if not Path(mark).exists()]
    if missing:
        raise NotInCheckoutError(
            f"a Dask worker on {socket.gethostname()} runs in {Path.cwd()}, which is not a "
            f"checkout of this project (no {', '.join(missing)}); start the workers from "
            "the checkout's folder: cd CHECKOUT && uv run dask worker ADDRESS")
    return [fn(job) for job in chunk]


def dask_map(fn: Callable[[Job], Result], jobs: list[Job], address: str,
             desc: str) -> Iterator[Result]:
    """``map(fn, jobs)`` in order over the Dask cluster at ``address``, a bounded window of
    chunks in flight."""
    try:
        from distributed import Client
    except ImportError:
        raise UserError(f"{DASK_ADDRESS}={address}: the distributed package is missing; "
                        "`make setup` installs it") from None
    address, patience = scheduler_address(address), wait_s()
    try:
        client = Client(address, timeout=f"{patience}s", set_as_default=False)
    except (OSError, TimeoutError, ValueError) as err:
        raise UserError(f"{DASK_ADDRESS}={address}: no Dask scheduler answers ({err}); start "
                        f"one (dask scheduler), or unset {DASK_ADDRESS} to use this machine's "
                        "cores") from None
    try:
        with tqdm(total=len(jobs), desc=desc, unit="img", disable=None) as bar:
            for results in _chunk_results(client, fn, jobs, address, desc, patience, bar):
                for result in results:
                    yield result
                    bar.update()
    finally:
        client.close(timeout=10)


class _Workers:
    """The cluster's worker threads, watched: one line when none is left, and a UserError once
    none has been there for ``patience`` seconds."""

    def __init__(self, client: object, address: str, patience: float, total: int) -> None:
        self.client, self.address, self.patience, self.total = client, address, patience, total
        self.none_since: float | None = None

    def threads(self, done: int) -> int:
        threads = sum(self.client.nthreads().values())  # type: ignore[attr-defined]
        if threads:
            self.none_since = None
            return threads
        if self.none_since is None:
            self.none_since = time.monotonic()
            logger.warning("no Dask worker is connected to %s; waiting up to %.0f s for one "
                           "(start one in this checkout: uv run dask worker %s)", self.address,
                           self.patience, self.address)
        elif time.monotonic() - self.none_since > self.patience:
            raise UserError(f"{DASK_ADDRESS}={self.address}: no Dask worker for "
                            f"{self.patience:.0f} s ({done} of {self.total} images done); start "
                            f"workers in this checkout (uv run dask worker {self.address}), or "
                            f"unset {DASK_ADDRESS} to use this machine's cores")
        return 0


def _chunk_results(client: object, fn: Callable[[Job], Result], jobs: list[Job], address: str,
                   desc: str, patience: float, bar: tqdm) -> Iterator[list[Result]]:
    from distributed.scheduler import KilledWorker

    workers = _Workers(client, address, patience, len(jobs))
    threads = workers.threads(0)
    while not threads:
        time.sleep(POLL_S)
        threads = workers.threads(0)
    logger.info("%s: %d images over the Dask cluster at %s (%d worker threads)", desc,
                len(jobs), address, threads)
    submit = client.submit  # type: ignore[attr-defined]
    chunks = iter([jobs[i:i + CHUNK] for i in range(0, len(jobs), CHUNK)])
    window = deque(submit(run_chunk, fn, chunk, pure=False)
                   for chunk in itertools.islice(chunks, 4 * threads))
    while window:
        future = window.popleft()
        while True:
            try:
                results = future.result(timeout=POLL_S)
                break
            except TimeoutError:  # distributed's is the built-in one
                workers.threads(bar.n)
            except NotInCheckoutError as err:
                raise UserError(str(err)) from None
            except KilledWorker:
                raise UserError(f"{DASK_ADDRESS}={address}: Dask workers died running the "
                                f"same {desc} images, more than distributed.scheduler."
                                "allowed-failures times; their logs say why (memory?)") from None
        future.release()
        following = next(chunks, None)
        if following is not None:
            window.append(submit(run_chunk, fn, following, pure=False))
        yield results
