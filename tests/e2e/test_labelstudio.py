"""``happysad labelstudio`` against a real Label Studio server, as the README tells a user to
work with it: tasks in, images shown through a Local Files storage, annotations out as
review decisions. The server comes from engines/label-studio (``make engines``)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from flows.server import free_port
from pipeline.contracts import decisions as decision_log
from testing.project import REPO

pytestmark = pytest.mark.slow
LABEL_STUDIO = REPO / "engines" / "label-studio" / ".venv" / "bin" / "label-studio"
TOKEN = "happysad-test-token-0123456789"


def _jpeg(colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), colour).save(out, "JPEG")
    return out.getvalue()


def _project(root: Path) -> list[dict]:
    """data/raw with three images and the suspects ranking the export reads."""
    rows = []
    for n, (label, colour) in enumerate([("happy", (250, 200, 0)), ("sad", (0, 40, 200)),
                                         ("sad", (10, 10, 90))]):
        data = _jpeg(colour)
        sha = hashlib.sha256(data).hexdigest()
        (root / "data" / "raw" / label).mkdir(parents=True, exist_ok=True)
        (root / "data" / "raw" / label / f"{sha}.jpg").write_bytes(data)
        rows.append({"sha256": sha, "class": label, "file": f"{label}/{sha}.jpg",
                     "flags": ["label_issue"] if n == 0 else [], "score": 3.0 - n,
                     "probability_of_class": 0.2 + 0.3 * n})
    (root / "reports" / "suspects").mkdir(parents=True)
    (root / "reports" / "suspects" / "suspects.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows))
    return rows


def _happysad(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", "--params", str(REPO / "params.yaml"),
                           "labelstudio", *args], cwd=root, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})


class LabelStudio:
    """Label Studio's HTTP API, with the legacy token the server was started with."""

    def __init__(self, url: str) -> None:
        self.url = url

    def call(self, method: str, path: str, body: object = None) -> bytes:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method, headers={
            "Authorization": f"Token {TOKEN}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.read()

    def json(self, method: str, path: str, body: object = None) -> object:
        return json.loads(self.call(method, path, body))


@pytest.fixture()
def label_studio(tmp_path: Path):
    """A Label Studio server on loopback, serving local files under ``tmp_path/project``."""
    if not LABEL_STUDIO.exists():
        pytest.skip("Label Studio is not installed in engines/label-studio (`make engines`)")
    root = tmp_path / "project"
    root.mkdir()
    port = free_port()
    env = {**os.environ, "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
           "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(root),
           "LABEL_STUDIO_BASE_DATA_DIR": str(tmp_path / "label-studio-data"),
           "PYTHONPATH": ""}
    log = (tmp_path / "label-studio.log").open("wb")
    server = subprocess.Popen(
        [str(LABEL_STUDIO), "start", "--no-browser", "--internal-host", "127.0.0.1", "-p", str(port),
         "--username", "reviewer@example.org", "--password", "happysad-test-pw",
         "--user-token", TOKEN, "--enable-legacy-api-token"],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300  # its first start migrates a new database
        while True:
            assert server.poll() is None, (tmp_path / "label-studio.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            assert time.monotonic() < deadline, "Label Studio did not answer in 300 s"
            time.sleep(1)
        yield LabelStudio(url), root
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def test_label_studio_shows_the_images_and_its_export_comes_back_as_decisions(label_studio) -> None:
    studio, root = label_studio
    rows = _project(root)
    exported = _happysad(root, "export", "tasks.json", "--top", "3")
    assert exported.returncode == 0, exported.stderr
    # The README's steps: a project with tasks.xml as its labelling config, a Local Files
    # storage on data/raw (added, not synced), then tasks.json imported.
    project = studio.json("POST", "/api/projects/", {
        "title": "happysad review", "label_config": (root / "tasks.xml").read_text()})
    studio.json("POST", "/api/storages/localfiles/", {
        "project": project["id"], "title": "data/raw", "path": str(root / "data" / "raw"),
        "use_blob_urls": False})
    studio.call("POST", f"/api/projects/{project['id']}/import",
                json.loads((root / "tasks.json").read_text()))
    tasks = studio.json("GET", f"/api/projects/{project['id']}/tasks/?page_size=10")
    tasks = tasks if isinstance(tasks, list) else tasks["tasks"]
    by_sha = {t["data"]["sha256"]: t for t in tasks}
    assert set(by_sha) == {r["sha256"] for r in rows}
    # Label Studio serves the image the task names: the very bytes in data/raw.
    first = rows[0]
    shown = studio.call("GET", by_sha[first["sha256"]]["data"]["image"])
    assert shown == (root / "data" / "raw" / first["file"]).read_bytes()
    # A person answers two tasks: the first is sad after all, the second is no person.
    for row, choice in [(rows[0], "sad"), (rows[1], "exclude")]:
        studio.json("POST", f"/api/tasks/{by_sha[row['sha256']]['id']}/annotations/", {
            "result": [{"from_name": "choice", "to_name": "image", "type": "choices",
                        "value": {"choices": [choice]}}]})
    (root / "export.json").write_bytes(
        studio.call("GET", f"/api/projects/{project['id']}/export?exportType=JSON"))
    imported = _happysad(root, "import", "export.json")
    assert imported.returncode == 0, imported.stderr
    made = decision_log.read(root / decision_log.DEFAULT_PATH)
    assert [(d.sha256, d.action, d.label) for d in made] == [
        (rows[0]["sha256"], "relabel", "sad"), (rows[1]["sha256"], "exclude", "sad")]
    again = _happysad(root, "import", "export.json")  # the same export twice adds nothing
    assert again.returncode == 0 and "2 were imported before" in again.stderr
    assert decision_log.read(root / decision_log.DEFAULT_PATH) == made
    (root / "min.json").write_bytes(
        studio.call("GET", f"/api/projects/{project['id']}/export?exportType=JSON_MIN"))
    refused = _happysad(root, "import", "min.json")
    assert refused.returncode == 2 and "JSON-MIN" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert decision_log.read(root / decision_log.DEFAULT_PATH) == made
