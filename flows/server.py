"""A local Prefect server with its UI, bound to 127.0.0.1, for ``make serve`` and the tests.

Its database lives in ``PREFECT_HOME`` (``.prefect/`` in the project by default,
so runs from ``make run`` and ``make serve`` share one history).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from flows.stages import stop_process_group

HOST = "127.0.0.1"


def cli_logging(verbose: bool) -> None:
    """A flow command's log lines on stderr (time, level, message), quiet or verbose."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    quiet_or_verbose(verbose)


def quiet_or_verbose(verbose: bool) -> None:
    """Quiet logs by default: no line per API call (httpx logs each of the runner's polls, one
    every few seconds); ``verbose`` brings them back with Prefect's and the stages' debug lines."""
    import logging

    logging.getLogger("httpx").setLevel(logging.DEBUG if verbose else logging.WARNING)
    if verbose:
        logging.getLogger("prefect").setLevel(logging.DEBUG)
        os.environ["HAPPYSAD_VERBOSE"] = "1"  # the stage processes log at debug level too


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def api_url(port: int) -> str:
    return f"http://{HOST}:{port}/api"


def is_up(url: str) -> bool:
    """True when a Prefect API answers its health check at ``url``."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return json.loads(response.read() or b"false") is True
    except (urllib.error.URLError, OSError, ValueError):
        return False


def server_home(url: str) -> Path | None:
    """The PREFECT_HOME of the Prefect server answering at ``url`` (from its settings), if any."""
    try:
        with urllib.request.urlopen(f"{url}/admin/settings", timeout=5) as response:
            home = json.loads(response.read()).get("home")
    except (urllib.error.URLError, OSError, ValueError, AttributeError):
        return None
    return Path(home).resolve() if home else None


def own_server(port: int, home: Path) -> tuple[str | None, str]:
    """The API URL of the server on 127.0.0.1:``port`` when its PREFECT_HOME is ``home`` (this
    checkout's, so its UI shows this project's runs), else None; and a line saying which."""
    url = api_url(port)
    if not is_up(url):
        return None, f"no Prefect server on {HOST}:{port}"
    theirs = server_home(url)
    if theirs == home.resolve():
        return url, f"the Prefect server on {HOST}:{port} (PREFECT_HOME {home})"
    return None, (f"the Prefect server on {HOST}:{port} belongs to PREFECT_HOME {theirs or 'unknown'}, "
                  f"not this checkout's {home}, so it is not used")


def start_server(home: Path, port: int, log_file: Path, timeout_s: float = 90.0) -> subprocess.Popen:
    """Start ``prefect server start`` on 127.0.0.1:``port``; return once its API answers."""
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_API_URL": api_url(port), "PREFECT_API_URL": api_url(port)}
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", HOST, "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the Prefect server exited with status {process.returncode}; "
                               f"its log is {log_file}")
        if is_up(api_url(port)):
            return process
        time.sleep(0.5)
    stop_server(process)
    raise RuntimeError(f"the Prefect server did not answer within {timeout_s:.0f} s; its log is {log_file}")


def stop_server(process: subprocess.Popen) -> None:
    stop_process_group(process, grace_s=20.0)
