"""The retrain flow on a real Prefect server: DVC's stages as tasks, retries, artifacts,
promotion, the DVC experiment record, and the UI in headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flows.server import free_port
from flows.stages import RAN, SKIPPED, stage_order, stop_process_group
from testing.project import REPO, TINY_SITE, copy_project, tiny_params, tool_env

ARTIFACTS = Path(os.environ.get("HAPPYSAD_TEST_ARTIFACTS", REPO / ".test-artifacts"))
PER_RUN_ARTIFACTS = {"scrape-report", "clean-report", "split-sizes", "data-version", "test-metrics",
                     "learning-curves", "confusion-matrix", "promotion", "experiment", "suspects"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """A real `prefect server start` with its UI on a free loopback port."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.server import api_url, start_server, stop_server

    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    process = start_server(home, port, home / "server.log")
    try:
        with temporary_settings({PREFECT_API_URL: api_url(port)}):
            yield api_url(port)
            from prefect.logging.handlers import APILogWorker

            APILogWorker.drain_all(timeout=10)  # send the last run logs while the server is up
    finally:
        stop_server(process)


def test_make_run_reports_only_to_the_server_of_this_checkout(server: str, tmp_path: Path) -> None:
    from flows.server import own_server, server_home

    port = int(server.rsplit(":", 1)[1].split("/")[0])
    home = server_home(server)
    assert home is not None and own_server(port, home)[0] == server
    url, why = own_server(port, tmp_path / "another-checkout" / ".prefect")
    assert url is None and f"belongs to PREFECT_HOME {home}" in why
    # `make serve` of another checkout does not register its deployment on this server
    env = {k: v for k, v in tool_env().items() if k != "PREFECT_API_URL"}
    served = subprocess.run([sys.executable, "-m", "flows.serve", "--port", str(port)], cwd=REPO,
                            env={**env, "PREFECT_HOME": str(tmp_path / "another-checkout" / ".prefect")},
                            capture_output=True, text=True, timeout=120)
    assert served.returncode == 2 and f"belongs to PREFECT_HOME {home}" in served.stderr


def _call(method: str, url: str, body: dict, patience_s: float = 180.0) -> object:
    """One REST call, tried again while the server answers 5xx (a loaded 2-core machine makes
    Prefect's SQLite answer 503 now and then) or not at all, up to ``patience_s``."""
    import time

    import httpx

    deadline = time.monotonic() + patience_s
    while True:
        try:
            response = httpx.request(method, url, json=body, timeout=30)
            if response.status_code < 500:
                response.raise_for_status()
                return response.json() if response.content else None
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
        else:
            if time.monotonic() > deadline:
                response.raise_for_status()
        time.sleep(2)


def _filter(api: str, what: str, body: dict) -> list[dict]:
    """POST the server's REST filter endpoint, as the UI does."""
    return _call("POST", f"{api}/{what}/filter", {"limit": 200, "offset": 0, **body})  # type: ignore[return-value]


def _task_runs(api: str, flow_run_id) -> dict[str, dict]:
    runs = _filter(api, "task_runs", {"flow_runs": {"id": {"any_": [str(flow_run_id)]}}})
    return {run["name"]: run for run in runs}


def _artifact_keys(api: str, flow_run_id) -> set[str]:
    found = _filter(api, "artifacts", {"artifacts": {"flow_run_id": {"any_": [str(flow_run_id)]}}})
    return {a["key"] for a in found if a["key"]}


FLAKY = """\
import pathlib, sys
count = pathlib.Path(sys.argv[1])
n = int(count.read_text()) + 1 if count.exists() else 1
count.write_text(str(n))
sys.exit(1 if n <= 2 else 0)  # fail twice, then let the real crawl run
"""


@pytest.fixture(scope="module")
def retrained(server: str, tmp_path_factory: pytest.TempPathFactory):
    """A tiny project after its first retrain flow run, whose crawl failed twice before it worked."""
    from flows.retrain import retrain

    tmp_path = tmp_path_factory.mktemp("retrained")
    project = copy_project(tmp_path / "project", tiny_params(TINY_SITE))
    # A crawl that fails twice before it works, to prove the retries: the stage command
    # runs a counter first, then the real scrape.
    (tmp_path / "flaky.py").write_text(FLAKY)
    dag = yaml.safe_load((project / "dvc.yaml").read_text())
    dag["stages"]["scrape"]["cmd"] = (f"python {tmp_path / 'flaky.py'} {tmp_path / 'attempts'} "
                                      "&& python -m pipeline.stages.scrape")
    (project / "dvc.yaml").write_text(yaml.safe_dump(dag, sort_keys=False))
    return project, retrain(str(project), return_state=True), tmp_path


def _own_copy(retrained, tmp_path: Path) -> Path:
    """This test's own copy of the retrained project (git, DVC cache, data and all), so no
    test sees what another changed and their order does not matter."""
    return Path(shutil.copytree(retrained[0], tmp_path / "project", symlinks=True))


def test_retrain_flow_end_to_end(server: str, retrained, tmp_path: Path) -> None:
    from flows.retrain import retrain

    _, first, flaky = retrained
    project = _own_copy(retrained, tmp_path)
    order = stage_order(project)
    assert first.is_completed(), first.message
    result = first.result()
    assert [s["outcome"] for s in result["stages"].values()] == [RAN] * len(order)
    assert (flaky / "attempts").read_text() == "3"
    runs = _task_runs(server, first.state_details.flow_run_id)
    assert set(runs) == set(order) | {"promote", "record-experiment"}
    assert runs["scrape"]["run_count"] == 3
    assert {run["state"]["type"] for run in runs.values()} == {"COMPLETED"}
    assert _artifact_keys(server, first.state_details.flow_run_id) >= PER_RUN_ARTIFACTS
    _check_quiet_logs(server, first.state_details.flow_run_id)
    decision = result["promotion"]
    assert decision["promoted"] and decision["champion"] is None
    assert (project / "models" / "production" / "model.keras").read_bytes() == \
        (project / "models" / "model.keras").read_bytes()
    assert (project / "models" / "production.dvc").exists()  # the champion is DVC-tracked

    # Scheduled runs crawl again; the demo site has nothing new, so DVC skips the rest.
    second = retrain(str(project), force_scrape=True, return_state=True)
    assert second.is_completed(), second.message
    result2 = second.result()
    outcomes = {s["stage"]: s["outcome"] for s in result2["stages"].values()}
    assert outcomes == {stage: RAN if stage == "scrape" else SKIPPED for stage in order}
    # The same model on the same test split ties with itself: the champion stays.
    decision2 = result2["promotion"]
    assert not decision2["promoted"] and decision2["champion"] == decision2["challenger"]
    assert "the champion stays" in decision2["reason"]
    assert set(_task_runs(server, second.state_details.flow_run_id)) == set(order) | {
        "promote", "record-experiment"}

    # The first run is a DVC experiment with its params and metrics; the second changed no
    # output, so it records none rather than a copy, and says so.
    shown = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json"], cwd=project,
                           env=tool_env(), capture_output=True, text=True, check=True).stdout
    names = {exp.get("name") for base in json.loads(shown) for exp in base.get("experiments") or []}
    assert result["experiment"] in names and result2["experiment"] is None
    assert len([n for n in names if n]) == 1
    assert "roc_auc" in shown and "batchnorm_momentum" in shown
    said = _filter(server, "artifacts", {"artifacts": {"key": {"any_": ["experiment"]}, "flow_run_id": {
        "any_": [str(second.state_details.flow_run_id)]}}})
    assert "No new DVC experiment" in said[0]["data"]

    flow_run = _filter(server, "flow_runs", {"flow_runs": {"id": {"any_": [
        str(first.state_details.flow_run_id)]}}})[0]
    _check_ui(server, flow_run, order)


def _check_quiet_logs(api: str, flow_run_id) -> None:
    """The run's logs in Prefect keep each stage's own lines and drop the noise at INFO."""
    import logging

    import httpx
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=30)  # the run's last lines may still be on their way
    logs: list[dict] = []
    while True:  # 200 a page, the server's limit
        page = httpx.post(f"{api}/logs/filter", timeout=30, json={
            "limit": 200, "offset": len(logs), "logs": {
                "flow_run_id": {"any_": [str(flow_run_id)]}, "level": {"ge_": logging.INFO}}})
        page.raise_for_status()
        logs += page.json()
        if len(page.json()) < 200:
            break
    text = "\n".join(entry["message"] for entry in logs)
    assert "epoch 1/1:" in text and "ETA" in text and "pipeline.stages.clean: clean: kept" in text
    for noise in ("Overridden settings", "Enabled downloader middlewares", "git add",
                  "core.autostage", "ran out of data", "oneDNN custom operations",
                  "HTTP Request:", "XNNPACK"):
        assert noise not in text, f"{noise!r} in the run's INFO logs"


def _check_ui(api: str, flow_run: dict, order: list[str]) -> None:
    """Headless Chromium opens the served UI: the flow run's page names the run and counts its
    task runs, and the task-run list names every stage (screenshots kept as test artifacts)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("headless Chromium (Debian package `chromium`) is not installed")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    ui = api.removesuffix("/api")
    tasks = [*order, "promote", "record-experiment"]

    def visit(page: str, screenshot: str | None = None) -> str:
        common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000",
                  "--virtual-time-budget=20000", f"--user-data-dir={ARTIFACTS / 'chromium-profile'}"]
        dom = subprocess.run(common + ["--dump-dom", page], capture_output=True, text=True,
                             timeout=120).stdout
        if screenshot:
            subprocess.run(common + [f"--screenshot={ARTIFACTS / screenshot}", page],
                           capture_output=True, timeout=120)
            assert (ARTIFACTS / screenshot).stat().st_size > 10_000
        return dom

    run_page = visit(f"{ui}/runs/flow-run/{flow_run['id']}", "prefect-ui-flow-run.png")
    assert flow_run["name"] in run_page and f"{len(tasks)} Task runs" in run_page
    task_list = visit(f"{ui}/runs?tab=task-runs", "prefect-ui-task-runs.png")
    missing = [name for name in tasks if name not in task_list]
    assert not missing, f"the UI's task-run list does not show {missing}"
    assert flow_run["name"] in task_list
    curves = _filter(api, "artifacts", {"artifacts": {"key": {"any_": ["learning-curves"]},
                                                      "flow_run_id": {"any_": [flow_run["id"]]}}})
    artifact_page = visit(f"{ui}/artifacts/artifact/{curves[0]['id']}", "prefect-ui-learning-curves.png")
    assert "data:image/png;base64," in artifact_page  # the plot itself, shown as an image
    report = _filter(api, "artifacts", {"artifacts": {"key": {"any_": ["clean-report"]},
                                                      "flow_run_id": {"any_": [flow_run["id"]]}}})
    table = visit(f"{ui}/artifacts/artifact/{report[0]['id']}")
    assert "rejected: exact_duplicate" in table and "label conflicts (all classes)" in table  # row labels


def test_serve_creates_the_scheduled_deployment(server: str, tmp_path: Path) -> None:
    """`make serve` against a running server: the deployment appears with params' cron schedule."""
    import time

    from pipeline.config.params import load_params

    settings = load_params(REPO / "params.yaml").flow
    env = {**tool_env(), "PREFECT_API_URL": server}
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "flows.serve"], cwd=REPO, env=env,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline, found = time.monotonic() + 90, []
        while time.monotonic() < deadline and not found:
            time.sleep(1)
            assert process.poll() is None, log.read_text()[-2000:]
            found = _filter(server, "deployments", {"deployments": {"name": {"any_": ["scheduled"]}}})
        assert found, log.read_text()[-2000:]
        deployment = found[0]
        assert deployment["parameters"] == {"force_scrape": settings.force_scrape}
        schedules = [s["schedule"] for s in deployment["schedules"]]
        assert schedules == [{"cron": settings.schedule, "timezone": settings.timezone,
                              "day_or": True}]
        process.send_signal(signal.SIGTERM)  # as `kill` or a service manager stops it
        assert process.wait(timeout=90) == 0
    finally:
        stop_process_group(process, grace_s=30.0)
    text = log.read_text()
    assert "never awaited" not in text and "Traceback" not in text, text[-2000:]


def _ok(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(command, cwd=cwd, env=env or tool_env(), capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, f"{command}: {result.stdout[-2000:]}{result.stderr[-2000:]}"
    return result.stdout + result.stderr


def _share_and_pull(project: Path, clone: Path, remote: list[list[str]], env: dict[str, str]) -> None:
    """The README's sharing steps with a remote set up by ``remote`` (dvc arguments): push
    from ``project``, then a fresh ``clone`` pulls, finds every stage up to date and answers
    with the same production model."""
    from testing.project import GIT

    dvc = [sys.executable, "-m", "dvc"]
    for arguments in remote:
        _ok(dvc + arguments, project, env)
    _ok(GIT + ["add", "-A"], project)
    _ok(GIT + ["commit", "-qm", "a retrained model and its data"], project)
    assert "models/production.dvc" in _ok(["git", "ls-files", "models"], project)
    share = [sys.executable, "-m", "flows.share"]  # what `make push` and `make pull` run
    pushed = _ok(share + ["push"], project, {**env, "PYTHONPATH": str(REPO)})
    assert "pushed" in pushed and "Having any troubles" not in pushed

    _ok(["git", "clone", "-q", str(project), str(clone)], clone.parent)
    assert "up to date" in _ok(share + ["pull"], clone, {**env, "PYTHONPATH": str(REPO)})
    dry = _ok(dvc + ["repro", "--dry"], clone, env)
    assert "Running stage" not in dry and "didn't change, skipping" in dry
    images = sorted(str(p) for p in (project / "data" / "raw" / "happy").iterdir())[:3]
    images += sorted(str(p) for p in (project / "data" / "raw" / "sad").iterdir())[:3]
    predict = [sys.executable, "-m", "pipeline", "predict", *images]
    here, there = _ok(predict, project), _ok(predict, clone)
    lines = [json.loads(line) for line in there.splitlines() if line.startswith("{")]
    assert len(lines) == len(images)
    assert [json.loads(line) for line in here.splitlines() if line.startswith("{")] == lines


def test_a_second_clone_pulls_the_results_and_predicts_without_retraining(
        retrained, tmp_path: Path) -> None:
    """Sharing through a local-folder DVC remote."""
    project = _own_copy(retrained, tmp_path)
    _share_and_pull(project, tmp_path / "clone",
                    [["remote", "add", "-d", "-f", "shared", str(tmp_path / "remote")]], tool_env())


def test_a_second_clone_pulls_from_an_s3_bucket(retrained, tmp_path: Path) -> None:
    """Sharing through an S3 bucket (a real S3-API server on loopback: moto), the endpoint in
    .dvc/config and the keys in the environment only, as docs/operations.md says."""
    from testing.s3 import CREDENTIALS, s3_server

    project = _own_copy(retrained, tmp_path)
    env = {**tool_env(), **CREDENTIALS}
    with s3_server("happysad-cache", tmp_path / "moto.log") as endpoint:
        _share_and_pull(project, tmp_path / "clone", [
            ["remote", "add", "-d", "-f", "shared", "s3://happysad-cache/dvc"],
            ["remote", "modify", "shared", "endpointurl", endpoint]], env)
    config = (project / ".dvc" / "config").read_text()
    assert endpoint in config and "secret_access_key" not in config and "access_key_id" not in config


def test_a_worker_of_a_work_pool_runs_the_deployment_in_its_own_checkout(
        server: str, retrained, tmp_path: Path) -> None:
    """`make deploy` then `make worker` on another machine: the deployment of a process work
    pool, a real `prefect worker start` in a separate process and checkout, `prefect deployment
    run`; the run completes with a task per stage and its outputs land in the worker's
    checkout (here everything is cached but the evaluation and the production model)."""
    import re
    import time

    checkout = _own_copy(retrained, tmp_path)  # the training machine's clone
    shutil.rmtree(checkout / "models" / "production")
    (checkout / "reports" / "evaluate" / "metrics.json").unlink()
    env = {**tool_env(), "PREFECT_API_URL": server}
    _ok([sys.executable, "-m", "flows.deploy", "--pool", "test-gpu", "--no-schedule"], REPO, env)
    prefect = str(Path(sys.executable).with_name("prefect"))
    log = tmp_path / "worker.log"
    worker = _worker("test-gpu", checkout, env, log)
    try:
        started = _ok([prefect, "deployment", "run", "retrain/test-gpu", "--param", "force_scrape=false"],
                      REPO, env)
        run_id = re.search(r"UUID: ([0-9a-f-]{36})", started)[1]
        deadline, state = time.monotonic() + 900, None  # generous: a loaded CI machine is slow
        while time.monotonic() < deadline:
            assert worker.poll() is None, log.read_text()[-3000:]
            state = _filter(server, "flow_runs", {"flow_runs": {"id": {"any_": [run_id]}}})[0]["state"]
            if state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                break
            time.sleep(2)
        assert state and state["type"] == "COMPLETED", (state, log.read_text()[-3000:])
    finally:
        stop_process_group(worker, grace_s=30.0)
    assert set(_task_runs(server, run_id)) == set(stage_order(checkout)) | {"promote", "record-experiment"}
    assert (checkout / "models" / "production" / "model.tflite").exists()
    assert (checkout / "reports" / "evaluate" / "metrics.json").exists()


def _worker(pool: str, checkout: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    """`make worker POOL=pool` in ``checkout``, in a process group of its own."""
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "flows.worker", "--pool", pool], cwd=checkout,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**env, "PREFECT_WORKER_QUERY_SECONDS": "1"})


def _run_deployment(name: str, env: dict[str, str]) -> str:
    import re

    prefect = str(Path(sys.executable).with_name("prefect"))
    started = _ok([prefect, "deployment", "run", name, "--param", "force_scrape=false"], REPO, env)
    return re.search(r"UUID: ([0-9a-f-]{36})", started)[1]


def _until(what, seconds: float, log: Path) -> object:
    """Poll ``what()`` every second until it answers truthy; fail with the worker's log after
    ``seconds``."""
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if found := what():
            return found
        time.sleep(1)
    raise AssertionError(f"not within {seconds:.0f} s; worker log:\n{log.read_text()[-3000:]}")


@pytest.mark.slow
def test_a_stopped_or_killed_worker_leaves_no_run_running_and_the_next_run_starts(
        server: str, retrained, tmp_path: Path) -> None:
    """A worker stopped by SIGINT to its process group (a script, a service manager) mid-run:
    its run is Crashed, not left Running, no process of it stays, and the deployment's one slot
    is free, so the next run starts on the next worker within a minute. A worker killed with
    `kill -9`: the next worker on the machine crashes the run it left."""
    import time

    import psutil

    project = _own_copy(retrained, tmp_path)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["epochs"] = 1000  # the train stage runs again, for long enough to stop it
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**tool_env(), "PREFECT_API_URL": server}
    _ok([sys.executable, "-m", "flows.deploy", "--pool", "test-stop", "--no-schedule"], REPO, env)
    log = tmp_path / "worker.log"

    def state(run_id: str) -> dict:
        return _filter(server, "flow_runs", {"flow_runs": {"id": {"any_": [run_id]}}})[0]["state"]

    def training(run_id: str) -> bool:
        return any(run["state"]["type"] == "RUNNING" for name, run in _task_runs(server, run_id).items()
                   if name == "train")

    first = _worker("test-stop", project, env, log)
    try:
        run = _run_deployment("retrain/test-stop", env)
        _until(lambda: training(run), 600, log)
        processes = psutil.Process(first.pid).children(recursive=True)
        assert len(processes) >= 3  # Prefect's worker, the flow run, DVC and the stage
        os.killpg(first.pid, signal.SIGINT)
        stopped = time.monotonic()
        assert first.wait(timeout=120) == 0
    finally:
        stop_process_group(first, grace_s=60.0)
    assert state(run)["type"] == "CRASHED"
    assert not [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    second_run = _run_deployment("retrain/test-stop", env)
    second = _worker("test-stop", project, env, log)
    try:
        _until(lambda: state(second_run)["type"] == "RUNNING", 60 - (time.monotonic() - stopped), log)
        _until(lambda: training(second_run), 300, log)
        second.kill()  # kill -9: nothing reports the run it held ...
        second.wait()
        third = _worker("test-stop", project, env, log)  # ... until the next worker here starts
        try:
            _until(lambda: state(second_run)["type"] == "CRASHED", 120, log)
        finally:
            stop_process_group(third, grace_s=60.0)
    finally:
        stop_process_group(second, grace_s=60.0)
    assert "stopped without finishing it" in (state(second_run)["message"] or "")


@pytest.mark.slow
def test_the_schedule_fires_and_the_served_flow_runs_it(server: str, retrained, tmp_path: Path) -> None:
    """`flows.serve` on an interval: the server's scheduler creates runs, the serving process
    executes one to Completed with a task per stage, and Prefect's CLI lists both."""
    import datetime
    import time

    project = _own_copy(retrained, tmp_path)
    env = {**tool_env(), "PREFECT_API_URL": server, "PREFECT_RUNNER_POLL_FREQUENCY": "1",
           "COLUMNS": "200"}  # the CLI's tables: wide enough that no name is cut
    started = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=1)
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "flows.serve", "--every", "5"],
                                   cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    deployment, runs, done = None, [], []
    try:
        deadline = time.monotonic() + 900  # generous: a loaded 2-core CI machine is slow
        while time.monotonic() < deadline and not done:
            time.sleep(2)
            assert process.poll() is None, log.read_text()[-3000:]
            found = _filter(server, "deployments", {"deployments": {"name": {"any_": ["scheduled"]}}})
            if not found or not found[0]["schedules"] or "interval" not in found[0]["schedules"][0][
                    "schedule"]:
                continue
            deployment = found[0]
            runs = [r for r in _filter(server, "flow_runs", {"deployments": {"id": {"any_": [
                deployment["id"]]}}, "sort": "EXPECTED_START_TIME_ASC"})
                    if r["auto_scheduled"] and datetime.datetime.fromisoformat(
                        r["expected_start_time"].replace("Z", "+00:00")) >= started]
            done = [r for r in runs if r["state_type"] == "COMPLETED"]
        assert done, f"no scheduled run completed; {len(runs)} scheduled\n{log.read_text()[-3000:]}"
        assert len(runs) >= 2  # the scheduler keeps creating runs, not one by hand
        tasks = _task_runs(server, done[0]["id"])
        assert set(stage_order(project)) <= set(tasks)
        assert {run["state"]["type"] for run in tasks.values()} == {"COMPLETED"}
        # Stop the schedule, let any run already started finish, then stop serving.
        _call("PATCH", f"{server}/deployments/{deployment['id']}", {"paused": True})
        while time.monotonic() < deadline and _filter(server, "flow_runs", {
                "deployments": {"id": {"any_": [deployment["id"]]}},
                "flow_runs": {"state": {"type": {"any_": ["RUNNING", "PENDING"]}}}}):
            time.sleep(2)
    finally:
        stop_process_group(process, grace_s=30.0)
    prefect = [sys.executable, "-m", "prefect"]
    assert "scheduled" in _ok(prefect + ["deployment", "ls"], project, env)
    assert done[0]["name"] in _ok(prefect + ["flow-run", "ls", "--limit", "50"], project, env)


def _tuned(project: Path, **tune_settings) -> Path:
    """The retrained tiny project (its data stages are up to date, so a search skips them) with
    params.yaml's `tune` section changed."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["tune"].update(tune_settings)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return project


def test_tune_flow_searches_on_train_val_and_its_best_reproduces(server: str, retrained,
                                                                 tmp_path: Path) -> None:
    from flows.tune import tune

    project = _tuned(_own_copy(retrained, tmp_path), trials=2, parallel=2, metric="val_loss", experiment=True,
                     space={"dropout": {"low": 0.0, "high": 0.5},
                            "filters": {"choices": [[4, 8], [4]]},
                            "learning_rate": {"low": 0.001, "high": 0.01, "log": True}})
    state = tune(str(project), return_state=True)
    assert state.is_completed(), state.message
    summary = state.result()
    work = project / "reports" / "tune"
    assert summary["trials"] == 2
    runs = _task_runs(server, state.state_details.flow_run_id)
    assert {f"trial-{n}" for n in range(2)} <= set(runs)
    assert {"tune-trial", "tune-summary"} <= _artifact_keys(server, state.state_details.flow_run_id)

    # The trials' records hold train and val only: the test split is not there to read.
    view = json.loads((work / "records" / "meta.json").read_text())
    assert set(view["counts"]) == {"train", "val"}
    assert not list((work / "records").glob("test-*"))
    assert len((work / "trials.csv").read_text().splitlines()) == 3
    first = json.loads(next(work.glob("trials/*/trial-000/result.json")).read_text())
    assert first["values"] == {"dropout": 0.1, "filters": [4, 8], "learning_rate": 0.001}
    assert (work / "trials.png").stat().st_size > 0
    best = summary["best_result"]
    assert summary["best_score"] == min(json.loads(p.read_text())["val"]["loss"]
                                        for p in work.glob("trials/*/trial-*/result.json"))
    applied = yaml.safe_load((work / "best_params.yaml").read_text())["train"]
    assert applied["dropout"] == pytest.approx(summary["best_values"]["dropout"])

    # The best values, run through the DAG as a DVC experiment, train to the same val score.
    assert summary["experiment"]
    metrics = json.loads((project / "reports" / "train" / "metrics.json").read_text())
    assert metrics["val"] == pytest.approx(best["val"], abs=1e-6)
    assert metrics["best_epoch"] == best["best_epoch"]
    shown = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json"], cwd=project,
                           env=tool_env(), capture_output=True, text=True, check=True).stdout
    assert summary["experiment"] in shown


def test_a_trial_refuses_records_with_a_test_split(tmp_path: Path) -> None:
    (tmp_path / "records").mkdir()
    (tmp_path / "records" / "test-00000-of-00001.tfrecord").write_bytes(b"")
    result = subprocess.run([sys.executable, "-m", "pipeline", "--params", str(REPO / "params.yaml"),
                             "tune", "--records", str(tmp_path / "records"), "--out",
                             str(tmp_path / "out"), "--values", "{}"], cwd=tmp_path,
                            capture_output=True, text=True, env=tool_env() | {"PYTHONPATH": str(REPO)})
    assert result.returncode == 2
    assert "holds test shards; a trial reads a train/val view only" in result.stderr


def test_tune_flow_runs_trials_on_a_dask_cluster(server: str, retrained, tmp_path: Path) -> None:
    from distributed import Client, LocalCluster, get_task_stream

    from flows.tune import main

    # Trials scored by 2-fold crossval of the train and val images, not by the one val split.
    project = _tuned(_own_copy(retrained, tmp_path), trials=2, parallel=2, experiment=False, cv_folds=2,
                     space={"dropout": {"low": 0.0, "high": 0.5}})
    cluster = LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                           dashboard_address=None)
    with cluster, Client(cluster) as client, get_task_stream(client) as stream:
        code = main(["--project", str(project), "--dask-address", cluster.scheduler_address])
    assert code == 0
    assert len(stream.data) >= 2  # both trials went through the Dask scheduler
    best = json.loads((project / "reports" / "tune" / "best.json").read_text())
    assert best["trials"] == 2 and "experiment" not in best
    assert best["scored_on"].startswith("2-fold out-of-fold")
    split = [json.loads(line) for line in (project / "data" / "split" / "split.jsonl").open()]
    folds = best["best_result"]["crossval"]
    assert folds["folds"] == 2 and folds["images"] == sum(r["split"] != "test" for r in split)
    # the score is the pooled out-of-fold figure (the metric an earlier test may have set)
    assert best["best_score"] == best["best_result"]["val"][best["metric"].removeprefix("val_")]
    latest = _filter(server, "flow_runs", {"flows": {"name": {"any_": ["tune"]}},
                                           "sort": "START_TIME_DESC"})[0]
    assert latest["state_type"] == "COMPLETED"
    assert {"trial-0", "trial-1"} <= set(_task_runs(server, latest["id"]))
