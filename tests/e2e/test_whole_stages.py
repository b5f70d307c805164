"""Whole stages as DVC and Prefect run them, killed or fed a FIFO: nothing is left running,
nothing hangs."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from pipeline.contracts.raw import RawRecord
from testing.project import REPO, TINY_SITE, copy_project, tiny_params, tool_env


def test_killing_dvc_takes_its_stage_along(tmp_path: Path) -> None:
    """`kill -9` of `dvc repro`: the stage it ran ends too (and so the stage's crawler), though
    DVC ran it through `$SHELL -c` and /bin/sh (dash) stays in between."""
    params = yaml.safe_load(tiny_params(TINY_SITE))
    params["scrape"]["crawl"]["download_delay_s"] = 3.0  # a crawl of minutes, were it left alone
    project = copy_project(tmp_path / "project", yaml.safe_dump(params))
    dvc = subprocess.Popen(["dvc", "repro", "scrape"], cwd=project,
                           env={**tool_env(), "SHELL": "/bin/sh"},
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, stage, crawler = time.monotonic() + 300, None, None
    while time.monotonic() < deadline and crawler is None:
        time.sleep(0.5)
        assert dvc.poll() is None, "dvc ended before its stage's crawl started"
        family = psutil.Process(dvc.pid).children(recursive=True)
        stage = next((p for p in family if p.cmdline()[-2:] == ["-m", "pipeline.stages.scrape"]),
                     None)
        crawler = next((p for p in family if "scraper.crawl" in " ".join(p.cmdline())), None)
    assert stage is not None and crawler is not None
    dvc.send_signal(signal.SIGKILL)
    dvc.wait()
    stage.wait(timeout=60)  # raises psutil.TimeoutExpired if the stage outlives DVC
    crawler.wait(timeout=60)


@pytest.mark.slow
def test_killing_clean_or_tfrecords_leaves_no_worker_behind(tmp_path: Path) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["clean"]["workers"] = params["tfrecords"]["workers"] = 2
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    _raw_of_big_images(tmp_path / "raw", 400)
    stage = [sys.executable, "-m", "pipeline", "--params", "params.yaml"]
    family = _kill_once_workers_run([*stage, "clean", "--raw", "raw", "--out", "clean",
                                     "--metrics", "clean-metrics.json"], tmp_path)
    _, alive = psutil.wait_procs(family, timeout=30)
    assert not alive, [p.cmdline() for p in alive]
    assert not (tmp_path / "clean" / "images.jsonl").exists()  # nothing half-written
    done = subprocess.run([*stage, "clean", "--raw", "raw", "--out", "clean", "--metrics",
                           "clean-metrics.json"], cwd=tmp_path, env=tool_env(), timeout=300)
    assert done.returncode == 0
    assert subprocess.run([*stage, "split", "--images", "clean/images.jsonl", "--out", "split"],
                          cwd=tmp_path, env=tool_env(), timeout=300).returncode == 0
    family = _kill_once_workers_run([*stage, "tfrecords", "--split", "split/split.jsonl", "--raw",
                                     "raw", "--out", "tfrecords"], tmp_path)
    _, alive = psutil.wait_procs(family, timeout=30)
    assert not alive, [p.cmdline() for p in alive]


@pytest.mark.slow
def test_the_flow_names_a_fifo_in_data_import_before_dvc_hangs_on_it(tmp_path: Path) -> None:
    project = copy_project(tmp_path / "project", tiny_params(TINY_SITE))
    (project / "data" / "import" / "happy").mkdir(parents=True)
    os.mkfifo(project / "data" / "import" / "happy" / "pipe.jpg")
    flow = subprocess.run([sys.executable, "-m", "flows.retrain", "--no-promote", "--no-record",
                           "--port", "1"], cwd=project, capture_output=True, text=True, timeout=300,
                          env={**tool_env(), "PREFECT_HOME": str(tmp_path / "prefect")})
    assert flow.returncode == 1
    error = next(line for line in flow.stderr.splitlines() if line.startswith("retrain: error:"))
    assert error.endswith("data/import/happy/pipe.jpg: a FIFO (named pipe), not a file; DVC would "
                          "wait on it forever while hashing the folder; remove it"), error
    assert "Traceback" not in flow.stderr, flow.stderr  # said before Prefect starts the run
    assert not (project / "data" / "raw").exists()  # no stage ran
    os.unlink(project / "data" / "import" / "happy" / "pipe.jpg")
    (project / "data" / "pretrain" / "sad").mkdir(parents=True)
    (project / "data" / "pretrain" / "sad" / "x.jpg").symlink_to(tmp_path / "gone.jpg")
    flow = subprocess.run([sys.executable, "-m", "flows.retrain", "--no-promote", "--no-record",
                           "--port", "1"], cwd=project, capture_output=True, text=True, timeout=300,
                          env={**tool_env(), "PREFECT_HOME": str(tmp_path / "prefect")})
    assert flow.returncode == 1 and "Traceback" not in flow.stderr, flow.stderr
    assert f"data/pretrain/sad/x.jpg: a link to '{tmp_path / 'gone.jpg'}', which" in flow.stderr


def _raw_of_big_images(raw: Path, count: int) -> None:
    """``count`` 640 px noise JPEGs in a raw store: seconds of decoding for the workers."""
    import numpy as np
    from PIL import Image

    from pipeline.contracts.raw import RawStore

    store, rng = RawStore(raw), np.random.default_rng(0)
    for n in range(count):
        out = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (640, 640, 3), dtype=np.uint8)).save(out, "JPEG")
        label = ("happy", "sad")[n % 2]
        stored, sniffed, _ = store.store(label, out.getvalue())
        store.append(RawRecord(url=f"u{n}", final_url=f"u{n}", page_url="p", source="s",
                               query="", label=label, sha256=Path(stored).stem, path=stored,
                               bytes=len(out.getvalue()), content_type="image/jpeg",
                               format=sniffed.format, width=640, height=640, licence=None,
                               attribution=None, fetched_at="t"))


def _kill_once_workers_run(command: list[str], cwd: Path) -> list[psutil.Process]:
    """Start a stage, ``kill -9`` it once its pool's workers run; what it had started."""
    stage = subprocess.Popen(command, cwd=cwd, env={**tool_env(), "PYTHONPATH": str(REPO)},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, family = time.monotonic() + 120, []
    while time.monotonic() < deadline:
        assert stage.poll() is None, "the stage ended before its workers started"
        family = psutil.Process(stage.pid).children(recursive=True)
        if sum("spawn_main" in " ".join(p.cmdline()) for p in family) >= 2:
            break
        time.sleep(0.05)
    assert family, "no workers started"
    stage.send_signal(signal.SIGKILL)
    stage.wait()
    return family
