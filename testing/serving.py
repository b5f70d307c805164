"""``happysad serve-model`` in a subprocess on a free loopback port, for tests and benchmarks:
started, its port read from its start line, stopped with Ctrl-C's signal."""

from __future__ import annotations

import re
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

READY = re.compile(r"on http://127\.0\.0\.1:(\d+)/v1/models/happysad:predict")


class ServeModel:
    """``serve-model ARGS --port 0`` in ``cwd``; ``started`` is when it was launched, ``log``
    its stderr lines so far, ``port`` and ``url`` where it answers."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str] | None = None,
                 timeout_s: float = 120.0, max_files: int | None = None) -> None:
        self.started = time.perf_counter()

        def limit_files() -> None:  # as `ulimit -n` would
            if max_files is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (max_files, max_files))

        self.process = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "serve-model", "--port", "0", *args],
            cwd=cwd, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
            preexec_fn=limit_files)
        self.log: list[str] = []
        self.port: int | None = None
        ready = threading.Event()

        def read() -> None:
            assert self.process.stderr is not None
            for line in self.process.stderr:
                self.log.append(line)
                match = READY.search(line)
                if match and self.port is None:
                    self.port = int(match[1])
                    ready.set()
            ready.set()  # it ended without starting

        self.reader = threading.Thread(target=read, daemon=True)
        self.reader.start()
        ready.wait(timeout_s)
        if self.port is None:
            self.stop()
            raise RuntimeError(f"serve-model did not start:\n{''.join(self.log)}")
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> int:
        """Ctrl-C, as a person stops it; its exit status."""
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout=60)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self.reader.join(timeout=30)  # every line it wrote is in ``log`` once this returns
