"""``happysad serve-model`` as a client sees it: a real server in its own process on a loopback
port, TF Serving's REST format, bad input, and a promotion while requests stream in."""

from __future__ import annotations

import base64
import datetime
import json
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import httpx
import pytest
import yaml

from pipeline.config.clean import CleanParams
from pipeline.config.params import Params
from pipeline.contracts.export import CARD_FILE, LITE_FILE, SHIPPED
from testing.project import REPO, tool_env
from testing.serving import ServeModel


class Service(ServeModel):
    """``happysad serve-model`` with an empty working folder and TMPDIR (so the test sees
    anything it writes) and params.yaml's ``serve_model`` section changed by ``serve``."""

    def __init__(self, model_dir: Path, work: Path, serve: dict, *flags: str,
                 max_files: int | None = None) -> None:
        params = yaml.safe_load((REPO / "params.yaml").read_text())
        params["clean"].update({"min_side": 32, "workers": 1})  # the tiny site's faces
        params["serve_model"].update(serve)
        self.cwd, self.tmp = work / "cwd", work / "tmp"
        self.cwd.mkdir(parents=True)
        self.tmp.mkdir()
        (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        env = {**tool_env(), "TMPDIR": str(self.tmp), "PYTHONPATH": str(REPO)}
        super().__init__(["--params", str(work / "params.yaml"), "--model-dir", str(model_dir), *flags],
                         self.cwd, env, max_files=max_files)
        self.client = httpx.Client(base_url=self.url, timeout=60)

    def stop(self) -> int:
        self.client.close()
        return super().stop()


def _b64(data: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(data).decode()}


def _bomb() -> bytes:
    """A PNG whose header claims 40000 x 40000 pixels, in a few bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def _images(tiny_raw: Path, count: int) -> list[Path]:
    return sorted(tiny_raw.glob("*/*.jpg"))[:count] or sorted(tiny_raw.glob("*/*"))[:count]


def _challenger(saved: Path, dest: Path, later: datetime.timedelta) -> Path:
    """``saved``'s shipped files with +6 on the output's bias (every image looks like class 1),
    exported again to LiteRT, with a card dated ``later`` after the original (its version)."""
    import keras

    from pipeline.stages.save import export_lite

    dest.mkdir(parents=True)
    for name in SHIPPED:
        (shutil.copytree if (saved / name).is_dir() else shutil.copy2)(saved / name, dest / name)
    model = keras.models.load_model(dest / "model.keras", safe_mode=True, compile=False)
    kernel, bias = model.get_layer("probability").get_weights()
    model.get_layer("probability").set_weights([kernel, bias + 6.0])
    model.save(dest / "model.keras")
    shutil.rmtree(dest / "serving")
    model.export(str(dest / "serving"), format="tf_saved_model", verbose=False)
    export_lite(model, dest / "serving", dest / LITE_FILE)
    _redate(dest, later)
    return dest


def _redate(model_dir: Path, later: datetime.timedelta) -> None:
    card = json.loads((model_dir / CARD_FILE).read_text())
    card["date"] = (datetime.datetime.fromisoformat(card["date"]) + later).isoformat()
    (model_dir / CARD_FILE).write_text(json.dumps(card))


def _version(model_dir: Path) -> str:
    card = json.loads((model_dir / CARD_FILE).read_text())
    return str(int(datetime.datetime.fromisoformat(card["date"]).timestamp()))


def test_a_port_in_use_is_one_line() -> None:
    import socket

    from pipeline.runtime.errors import UserError
    from pipeline.tools.serve_model import listen

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(UserError, match=r"127\.0\.0\.1:\d+: cannot listen .*--port"):
            listen("127.0.0.1", taken.getsockname()[1])


@pytest.fixture()
def production(saved: Path, tmp_path: Path) -> Path:
    from pipeline.tools.promote import _swap_in

    _swap_in(saved, tmp_path / "production")
    return tmp_path / "production"


def test_tf_serving_clients_and_plain_uploads_get_predicts_answers(
        production: Path, tiny_raw: Path, tiny_clean_params: CleanParams, repo_params: Params,
        tmp_path: Path) -> None:
    from pipeline.tools.predict import predict

    files = _images(tiny_raw, 6)
    expected = {p.path: p for p in predict(files, production)}
    version = _version(production)
    service = Service(production, tmp_path / "serve", {"max_instances": 8}, "--face-found")
    try:
        client = service.client
        # model status and metadata, as TF Serving writes them
        status = client.get("/v1/models/happysad")
        assert status.status_code == 200 and status.headers["content-type"] == "application/json"
        assert status.json() == {"model_version_status": [{
            "version": version, "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
        assert client.get(f"/v1/models/happysad/versions/{version}").json() == status.json()
        metadata = client.get("/v1/models/happysad/metadata").json()
        assert metadata["model_spec"] == {"name": "happysad", "signature_name": "", "version": version}
        signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
        assert signature["inputs"]["image_bytes"]["dtype"] == "DT_STRING"
        assert set(signature["outputs"]) == {"label", "probability", "scores", "face_found"}
        assert signature["method_name"] == "tensorflow/serving/predict"

        # row format: one object per instance, with each named output
        body = {"instances": [_b64(f.read_bytes()) for f in files]}
        answer = client.post("/v1/models/happysad:predict", json=body)
        assert answer.status_code == 200, answer.text + "".join(service.log)
        assert answer.headers["x-model-version"] == version
        predictions = answer.json()["predictions"]
        assert list(answer.json()) == ["predictions"] and len(predictions) == len(files)
        for file, row in zip(files, predictions, strict=True):
            want = expected[str(file)]
            assert set(row) == {"label", "probability", "scores", "face_found"}
            assert row["label"] == want.label and row["face_found"] == want.face_found
            assert row["probability"] == pytest.approx(want.probability, abs=1e-5)
            assert row["scores"] == pytest.approx(list(want.probabilities.values()), abs=1e-5)
        # the same with the input named, at the version asked for
        named = {"signature_name": "serving_default",
                 "instances": [{"image_bytes": i} for i in body["instances"]]}
        again = client.post(f"/v1/models/happysad/versions/{version}:predict", json=named)
        assert again.json() == answer.json()
        # columnar: one list per output
        columns = client.post("/v1/models/happysad:predict",
                              json={"inputs": {"image_bytes": body["instances"]}}).json()
        assert columns == {"outputs": {key: [row[key] for row in predictions] for key in
                                       ("label", "probability", "scores", "face_found")}}

        # the plain route: files of a form in, predict's lines out
        form = [("image", (f.name, f.read_bytes(), "image/jpeg")) for f in files[:3]]
        plain = client.post("/predict", files=form)
        assert plain.status_code == 200, plain.text
        for file, line in zip(files, plain.json(), strict=False):
            want = expected[str(file)].__dict__
            assert line["path"] == file.name and line["model_version"] == int(version)
            assert {k: line[k] for k in ("label", "face_found", "abstained")} == {
                k: want[k] for k in ("label", "face_found", "abstained")}
            assert line["probability"] == pytest.approx(want["probability"], abs=1e-5)
        one = client.post("/predict", content=files[0].read_bytes(), headers={"content-type": "image/jpeg"})
        assert one.json()[0]["label"] == expected[str(files[0])].label

        assert client.get("/health").json()["model_version"] == int(version)
        text = client.get("/metrics").text
        assert f"happysad_model_version {version}" in text
        assert 'happysad_requests_total{route="tf_predict",code="200"} 3' in text
        assert f"happysad_images_total {3 * len(files) + 3 + 1}" in text
        assert 'happysad_request_seconds_bucket{route="predict",le="+Inf"} 2' in text
    finally:
        assert service.stop() == 0, "".join(service.log)


def test_bad_requests_get_a_one_line_4xx_and_the_server_keeps_serving(
        production: Path, tiny_raw: Path, tmp_path: Path) -> None:
    good = _images(tiny_raw, 1)[0].read_bytes()
    service = Service(production, tmp_path / "serve",
                      {"max_instances": 4, "max_body_bytes": 200_000})
    tf = "/v1/models/happysad:predict"
    bad = {
        "not an image": ("POST", tf, {"json": {"instances": [_b64(b"<html><body>hi</body></html>")]}},
                         400, "instances[0]: not a usable image (not_an_image"),
        "truncated": ("POST", tf, {"json": {"instances": [_b64(good), _b64(good[: len(good) // 2])]}},
                      400, "instances[1]: not a usable image"),
        "a bomb": ("POST", tf, {"json": {"instances": [_b64(_bomb())]}}, 400, "too_many_pixels"),
        "a wrong field": ("POST", tf, {"json": {"instances": [{"image": _b64(good)}]}}, 400,
                          'instances[0]: expected {"b64"'),
        "a wrong top-level key": ("POST", tf, {"json": {"examples": [_b64(good)]}}, 400, "unknown: examples"),
        "bad base64": ("POST", tf, {"json": {"instances": [{"b64": "not base64!"}]}}, 400,
                       "not valid base64"),
        "not JSON": ("POST", tf, {"content": b"instances=1"}, 400, "not JSON"),
        "JSON nested deep": ("POST", tf, {"content": b"[" * 250_000}, 413, "max_body_bytes"),
        "JSON nested deep, small": ("POST", tf, {"content": b"[" * 100_000}, 400, "nested too deeply"),
        "an oversized body": ("POST", tf, {"json": {"instances": [{"b64": "A" * 300_000}]}}, 413,
                              "max_body_bytes"),
        "too many instances": ("POST", tf, {"json": {"instances": [_b64(good)] * 5}}, 413,
                               "max_instances"),
        "no instances": ("POST", tf, {"json": {"instances": []}}, 400, "no image"),
        "another signature": ("POST", tf, {"json": {"signature_name": "x", "instances": [_b64(good)]}},
                              400, "serving_default only"),
        "classify": ("POST", "/v1/models/happysad:classify", {"json": {}}, 400, "one signature"),
        "another model": ("POST", "/v1/models/other:predict", {"json": {}}, 404,
                          "Servable not found for request: Latest(other)"),
        "another version": ("GET", "/v1/models/happysad/versions/7", {}, 404,
                            "Servable not found for request: Specific(happysad, 7)"),
        "GET predict": ("GET", tf, {}, 405, "POST a predict request"),
        "a text form": ("POST", "/predict", {"content": b"hello", "headers": {"content-type": "text/plain"}},
                        415, "Content-Type text/plain"),
        "a field, not a file": ("POST", "/predict", {"data": {"image": "x"}, "files": {"f": ("a.jpg", good)}},
                                400, "form field 'image' is not a file"),
        "a broken form": ("POST", "/predict", {"content": b"--x\r\nno end",
                                               "headers": {"content-type": "multipart/form-data"}},
                          400, "malformed"),
        "an unknown route": ("GET", "/v2/anything", {}, 404, "not found"),
    }
    try:
        for what, (method, path, kwargs, status, message) in bad.items():
            answer = service.client.request(method, path, **kwargs)
            assert answer.status_code == status, (what, answer.text)
            error = answer.json()["error"]
            assert message in error and "\n" not in error, (what, error)
            assert answer.headers["x-model-version"] == _version(production), what
        # still up, still right
        assert service.client.get("/health").status_code == 200
        assert service.client.post(tf, json={"instances": [_b64(good)]}).status_code == 200
        assert service.process.poll() is None
        # nothing of a request was written: not in the working folder, not in TMPDIR
        assert not any(service.cwd.iterdir()) and not any(service.tmp.iterdir())
        assert not any(" ERROR " in line or "Traceback" in line for line in service.log), service.log
    finally:
        assert service.stop() == 0, "".join(service.log)


@pytest.mark.slow
def test_a_promotion_while_requests_stream_in_is_swapped_in_without_a_failed_request(
        production: Path, saved: Path, tiny_raw: Path, tmp_path: Path) -> None:
    from pipeline.tools.promote import _swap_in

    challenger = _challenger(saved, tmp_path / "challenger", datetime.timedelta(days=1))
    broken = tmp_path / "broken"
    shutil.copytree(challenger, broken)
    (broken / LITE_FILE).write_bytes(b"not a model")
    _redate(broken, datetime.timedelta(days=1))
    again = tmp_path / "again"  # the first model, saved again two days later
    shutil.copytree(production, again)
    _redate(again, datetime.timedelta(days=2))
    old, new, third = _version(production), _version(challenger), _version(again)
    image = _b64(_images(tiny_raw, 1)[0].read_bytes())
    service = Service(production, tmp_path / "serve", {"poll_s": 0.1, "settle_polls": 2})
    answers: list[tuple[int, str, float | None]] = []
    stop = threading.Event()

    def stream() -> None:
        with httpx.Client(base_url=service.url, timeout=60) as client:
            while not stop.is_set():
                reply = client.post("/v1/models/happysad:predict", json={"instances": [image]})
                score = reply.json()["predictions"][0]["scores"][1] if reply.status_code == 200 else None
                answers.append((reply.status_code, reply.headers.get("x-model-version", ""), score))

    def until(condition, what: str) -> None:
        deadline = time.monotonic() + 90
        while not condition():
            assert time.monotonic() < deadline, f"{what}:\n{''.join(service.log)}"
            time.sleep(0.05)

    clients = [threading.Thread(target=stream) for _ in range(4)]
    try:
        for client in clients:
            client.start()
        until(lambda: len(answers) >= 20, "no answers")
        _swap_in(challenger, production)  # what `happysad promote` does to models/production
        until(lambda: any(version == new for _, version, _ in answers), "never swapped")
        count = len(answers)
        until(lambda: len(answers) >= count + 20, "no answers after the swap")
        _swap_in(broken, production)  # a model that cannot load: logged, and the last one stays
        until(lambda: "model_load_failures_total 1" in service.client.get("/metrics").text,
              "the broken model was not tried")
        count = len(answers)
        until(lambda: len(answers) >= count + 20, "no answers after the broken model")
        for name in (LITE_FILE, CARD_FILE):  # files rewritten in place, as `dvc pull` does
            shutil.copyfile(again / name, production / name)
        until(lambda: any(version == third for _, version, _ in answers), "no swap after a pull")
    finally:
        stop.set()
        for client in clients:
            client.join(timeout=60)
        code = service.stop()
    assert code == 0, "".join(service.log)
    assert {status for status, _, _ in answers} == {200}
    assert {version for _, version, _ in answers} == {old, new, third}
    scores = {version: {round(s, 4) for _, v, s in answers if v == version} for version in (old, new, third)}
    # each version gave one answer for the image, and the challenger's is its own (+6 on the bias)
    assert len(scores[old]) == 1 and len(scores[new]) == 1 and scores[new] != scores[old], scores
    assert scores[third] == scores[old]
    assert answers[-1][1] == third
    assert any("now serving version " + new in line for line in service.log)
    assert any(LITE_FILE in line for line in service.log
               if "still serving version " + new in line), service.log
    assert not any(os.scandir(service.tmp))


def _tiny_parts(count: int) -> tuple[bytes, str]:
    part = (b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.jpg\"\r\n"
            b"\r\nx\r\n")
    return part * count + b"--b--\r\n", "multipart/form-data; boundary=b"


@pytest.mark.slow  # a server, 300 connections, 33 MB of requests: CI runs it
def test_slow_clients_many_parts_and_a_nan_threshold_do_not_stall_or_fool_the_server(
        production: Path, saved: Path, tiny_raw: Path, tmp_path: Path) -> None:
    """Under `ulimit -n 256`: 300 clients that never finish their request are closed after
    serve_model.read_timeout_s or refused over the cap, in a line or two, and /health answers; a
    19 MB form of tiny parts is refused at part 65 while /health answers; a card whose
    threshold is NaN is not swapped in, and predict refuses it in one line. (Before: /health
    timed out, then 202,661 tracebacks; 55.7 s parsing with /health waiting; every image
    "happy" with exit 0.)"""
    import socket

    from pipeline.tools.promote import _swap_in

    good = _images(tiny_raw, 1)[0].read_bytes()
    service = Service(production, tmp_path / "serve", {"read_timeout_s": 3, "poll_s": 0.1},
                      max_files=256)
    slow: list[socket.socket] = []
    try:
        for _ in range(300):  # slowloris: a request line and one header, then nothing
            conn = socket.create_connection(("127.0.0.1", service.port), timeout=10)
            conn.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            slow.append(conn)
        deadline, health = time.monotonic() + 30, None
        while health is None or health.status_code != 200:
            assert time.monotonic() < deadline, "".join(service.log)
            try:
                health = httpx.get(f"{service.url}/health", timeout=5)
            except httpx.TransportError:
                time.sleep(0.2)
        def closed(conn: socket.socket) -> bool:
            try:
                return conn.recv(1) == b""
            except ConnectionResetError:
                return True

        assert sum(map(closed, slow)) == 300  # the server closed them all

        body, kind = _tiny_parts(256_000)  # 19 MB
        assert 18_000_000 < len(body) < 20_000_000
        answers: dict[str, httpx.Response] = {}
        sender = threading.Thread(target=lambda: answers.update(form=httpx.post(
            f"{service.url}/predict", content=body, headers={"content-type": kind}, timeout=120)))
        sender.start()
        while sender.is_alive():
            assert httpx.get(f"{service.url}/health", timeout=10).status_code == 200
            time.sleep(0.05)
        assert answers["form"].status_code == 413
        assert "65 images in one request" in answers["form"].json()["error"]
        # the same through TF Serving's door: 14 MB of JSON, a million empty instances
        many = b'{"instances": [' + b",".join([b'{"b64": ""}'] * 1_000_000) + b"]}"
        sender = threading.Thread(target=lambda: answers.update(json=httpx.post(
            f"{service.url}/v1/models/happysad:predict", content=many, timeout=120)))
        sender.start()
        while sender.is_alive():
            assert httpx.get(f"{service.url}/health", timeout=10).status_code == 200
            time.sleep(0.05)
        assert answers["json"].status_code == 413
        assert "1000000 images in one request" in answers["json"].json()["error"]

        version = _version(production)
        nan_card = tmp_path / "nan"
        shutil.copytree(_challenger(saved, tmp_path / "challenger", datetime.timedelta(days=1)),
                        nan_card)
        card = json.loads((nan_card / CARD_FILE).read_text())
        (nan_card / CARD_FILE).write_text(json.dumps(card | {"threshold": float("nan")}))
        _swap_in(nan_card, production)
        deadline = time.monotonic() + 60
        while "model_load_failures_total 1" not in httpx.get(f"{service.url}/metrics").text:
            assert time.monotonic() < deadline, "".join(service.log)
            time.sleep(0.1)
        health = httpx.get(f"{service.url}/health").json()
        assert str(health["model_version"]) == version and 0 < health["threshold"] < 1
        assert httpx.post(f"{service.url}/v1/models/happysad:predict",
                          json={"instances": [_b64(good)]}).status_code == 200
    finally:
        for conn in slow:
            conn.close()
        code = service.stop()
    assert code == 0, "".join(service.log)
    said = "".join(service.log)
    assert "Traceback" not in said and "Too many open files" not in said, said
    closing = [line for line in service.log if "serve-model: closed" in line]
    assert 1 <= len(closing) <= 3, closing
    assert any("threshold nan: not a probability between 0 and 1" in line
               for line in service.log), said
    predicted = subprocess.run([sys.executable, "-m", "pipeline", "predict", "--model-dir",
                                str(production), str(_images(tiny_raw, 1)[0])], cwd=REPO,
                               env=tool_env(), capture_output=True, text=True, timeout=300)
    assert predicted.returncode != 0 and "Traceback" not in predicted.stderr
    assert predicted.stderr.strip().splitlines()[-1].endswith(
        "threshold nan: not a probability between 0 and 1); run `dvc repro save` again"), \
        predicted.stderr
