"""A throwaway PostgreSQL cluster on loopback for the tests, from the machine's own PostgreSQL
(Debian's ``postgresql`` package): initdb in a temporary folder, a server on a free port,
stopped with it. ``binaries()`` is None where PostgreSQL is not installed."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from testing.project import free_port


def binaries() -> Path | None:
    """The folder of initdb and pg_ctl: on PATH, or Debian's /usr/lib/postgresql/<v>/bin."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(versions[-1]).parent if versions else None


def _as_owner(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run it as the ``postgres`` user."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@contextlib.contextmanager
def postgres(user: str = "prefect", database: str = "prefect") -> Iterator[str]:
    """A PostgreSQL server holding an empty ``database`` owned by ``user`` (trust
    authentication on loopback only) in a temporary folder of its own (the server's user
    must reach it, which pytest's private tmp folders do not allow); yields its SQLAlchemy
    asyncpg URL, then stops the server and removes the folder."""
    bin_dir = binaries()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL is not installed")
    port = free_port()
    folder = Path(tempfile.mkdtemp(prefix="happysad-postgres-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    data, log = folder / "data", folder / "postgres.log"

    def run(*command: str) -> None:
        done = subprocess.run(_as_owner(list(command)), capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise RuntimeError(f"{command[0]}: {done.stdout[-1500:]}{done.stderr[-1500:]}")

    run(str(bin_dir / "initdb"), "-D", str(data), "-U", user, "--auth=trust", "-E", "UTF8")
    run(str(bin_dir / "pg_ctl"), "start", "-w", "-D", str(data), "-l", str(log), "-o",
        f"-p {port} -k {folder} -c listen_addresses=127.0.0.1")
    try:
        run(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", user, database)
        yield f"postgresql+asyncpg://{user}@127.0.0.1:{port}/{database}"
    finally:
        try:
            run(str(bin_dir / "pg_ctl"), "stop", "-D", str(data), "-m", "fast", "-w")
        finally:
            shutil.rmtree(folder, ignore_errors=True)
