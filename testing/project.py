"""A throwaway copy of this project, as a fresh clone would have it, for end-to-end runs.

Used by the DAG and flow tests (with tiny params) and by the benchmarks (with the
real ones), so each runs DVC and Prefect on a copy and never on this checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from pipeline.config.loader import load_sections
from pipeline.config.scrape import DemoSiteParams

REPO = Path(__file__).resolve().parents[1]


def demo_site(**changes: object) -> DemoSiteParams:
    """The repository's demo_site params with ``changes``."""
    params = load_sections(REPO / "params.yaml", demo_site=DemoSiteParams).demo_site
    return params.model_copy(update=changes)


# A demo site of 10 faces per class with every planted fault: what the tests crawl.
TINY_SITE = demo_site(seed=11, images_per_class=10, min_side=48, max_side=80, results_per_page=6,
                      slow_response_s=0.5)
GIT = ["git", "-c", "user.name=happysad tests", "-c", "user.email=tests@happysad.invalid"]


def copy_project(dest: Path, params: str | None = None) -> Path:
    """The tracked and unignored files, without data (but with the review decisions), models,
    reports or dvc.lock, committed to a new git repository at ``dest`` (DVC experiments need
    a commit)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (name.startswith(("data/", "reports/", "models/")) and not name.endswith(".gitignore")
                and not name.startswith("data/review/") or name == "dvc.lock"):
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if (REPO / name).is_file():
            shutil.copy2(REPO / name, target)
    if params is not None:
        (dest / "params.yaml").write_text(params)
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "copy"]):
        subprocess.run(GIT + command, cwd=dest, check=True)
    return dest


# The tiny network every test trains: two blocks for 32 px images, seconds an epoch. How many
# epochs is each caller's: a whole-DAG run needs one, a test of the kept epoch two.
TINY_TRAIN = {"filters": [4, 8], "dense_units": 8, "batch_size": 4}


def tiny_params(site: DemoSiteParams, text: str | None = None, epochs: int = 1) -> str:
    """params.yaml shrunk to seconds: a tiny demo site, 32 px images, the tiny network trained
    ``epochs`` epochs."""
    params = yaml.safe_load(text if text is not None else (REPO / "params.yaml").read_text())
    params["demo_site"].update(site.model_dump(mode="json"))
    params["scrape"]["crawl"].update({"autothrottle": False, "download_timeout_s": 5.0})
    params["clean"].update({"min_side": 32, "workers": 1})
    params["split"]["fractions"] = {"train": 0.5, "val": 0.25, "test": 0.25}
    params["tfrecords"].update({"image_size": 32, "workers": 1})
    params["train"].update({**TINY_TRAIN, "epochs": epochs})
    params["flow"].update({"retry_delay_s": 0.0})
    return yaml.safe_dump(params, sort_keys=False)


def params_file(path: Path, **sections: dict) -> Path:
    """The repository's params.yaml written to ``path``, each of ``sections`` updated with the
    values given for it (a test's own settings for a stage it runs)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for name, values in sections.items():
        params[name] = {**params.get(name, {}), **values}
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def tool_env() -> dict[str, str]:
    """The environment with this interpreter's bin folder first, so `dvc` and `python` are ours."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for a server that cannot
    say which port it took when given 0)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop_process(process: subprocess.Popen, timeout: float = 20) -> None:
    """Ask a server a test started to stop (SIGTERM), and kill it if it has not in ``timeout``."""
    import subprocess

    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
