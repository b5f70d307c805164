"""A team's Prefect server on PostgreSQL (docs/operations.md): a real server started on a
throwaway PostgreSQL cluster runs a flow, and the run is in PostgreSQL's tables."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from testing.postgres import binaries, postgres
from testing.project import REPO, tool_env

FLOW = """
from prefect import flow, task

@task
def double(x: int) -> int:
    return 2 * x

@flow(name="on-postgres")
def on_postgres() -> int:
    return double(21)

assert on_postgres() == 42
"""


@pytest.mark.skipif(binaries() is None,
                    reason="PostgreSQL is not installed (Debian: apt-get install postgresql)")
def test_the_prefect_server_runs_on_postgresql(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.server import api_url, free_port, start_server, stop_server

    with postgres() as url:
        monkeypatch.setenv("PREFECT_API_DATABASE_CONNECTION_URL", url)
        port = free_port()
        server = start_server(tmp_path / "prefect-home", port, tmp_path / "server.log", timeout_s=180)
        try:
            env = {**tool_env(), "PREFECT_API_URL": api_url(port)}
            env.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)  # the client needs only the API
            done = subprocess.run([sys.executable, "-c", FLOW], cwd=REPO, env=env, capture_output=True,
                                  text=True, timeout=300)
            assert done.returncode == 0, done.stderr[-3000:]
        finally:
            stop_server(server)
        bin_dir = binaries()
        host_port = url.split("@")[1].split("/")[0]
        host, pg_port = host_port.split(":")
        rows = subprocess.run(
            [str(bin_dir / "psql") if (bin_dir / "psql").exists() else "psql", "-h", host, "-p", pg_port,
             "-U", "prefect", "-d", "prefect", "-tA", "-c",
             "select f.name, r.state_type from flow_run r join flow f on f.id = r.flow_id"],
            capture_output=True, text=True, timeout=60)
        assert rows.returncode == 0, rows.stderr
        assert "on-postgres|COMPLETED" in rows.stdout.splitlines(), rows.stdout
    assert "sqlite" not in (tmp_path / "server.log").read_text().lower()
