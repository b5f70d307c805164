"""Seeing the person: MTCNN with its bundled weights, the two-view records and model (whole
picture + aligned face), its safe reload and LiteRT export, predict's face flag and
``--require-face``, and evaluate's figures with and without a face.

The one real photo is the portrait matplotlib ships (``grace_hopper.jpg``, a public-domain
US Navy photo): a test needs a real face, and no file is fetched."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.config.params import Params
from pipeline.config.train import TrainParams
from pipeline.runtime.errors import UserError
from testing.project import REPO, params_file


def portrait() -> np.ndarray:
    import cv2
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def turned(rgb: np.ndarray, degrees: float) -> np.ndarray:
    import cv2

    height, width = rgb.shape[:2]
    turn = cv2.getRotationMatrix2D((width / 2, height / 2), degrees, 1.0)
    return cv2.warpAffine(rgb, turn, (width, height), borderMode=cv2.BORDER_REPLICATE)


def eye_angle(face) -> float:
    (lx, ly), (rx, ry) = face.eyes
    return math.degrees(math.atan2(ry - ly, rx - lx))


def test_mtcnn_finds_a_real_face_with_its_bundled_weights_and_the_crop_levels_its_eyes(
        repo_params: Params) -> None:
    from pipeline.vision.faces import aligned_crop, detect

    mtcnn = repo_params.faces.model_copy(update={"detector": "mtcnn"})
    tilted = turned(portrait(), 20)
    found = detect(tilted, mtcnn)
    assert len(found) == 1 and found[0].confidence >= mtcnn.min_confidence
    assert abs(eye_angle(found[0])) > 15  # the eyes follow the turn
    crop = aligned_crop(tilted, found[0], 0.4)
    assert crop.shape[0] == crop.shape[1] > found[0].width  # a square with its margin
    again = detect(crop, mtcnn.model_copy(update={"min_face": 0.3}))
    assert again and abs(eye_angle(again[0])) < 4  # levelled
    # no face: a flat picture and random noise; Haar still works as before
    rng = np.random.default_rng(0)
    assert not detect(np.full((200, 240, 3), 120, np.uint8), mtcnn)
    assert not detect(rng.integers(0, 256, (200, 240, 3), np.uint8), mtcnn)
    assert detect(portrait(), repo_params.faces.model_copy(update={"detector": "haar"}))


def _raw_set(folder: Path) -> Path:
    """Variants of the portrait (shifted, mirrored, darker: a face each) and faceless noise
    pictures, alternately happy and sad, split 12/6/6; the split file."""
    from pipeline.vision.images import encode

    rng = np.random.default_rng(1)
    face = portrait()
    rows = []
    for n in range(24):
        if n % 2:
            shade = rng.integers(0, 256, (1, 1, 3))
            pixels = np.clip(rng.normal(shade, 40, (180, 220, 3)), 0, 255).astype(np.uint8)
        else:
            top, left = rng.integers(0, 60, 2)
            pixels = face[top:top + 480, left:left + 420]
            pixels = pixels[:, ::-1] if n % 4 else (pixels * 0.8).astype(np.uint8)
        label = ("happy", "sad")[(n // 2) % 2]
        data = encode(np.ascontiguousarray(pixels), "jpeg", 90)
        sha = hashlib.sha256(data).hexdigest()
        (folder / label).mkdir(parents=True, exist_ok=True)
        (folder / label / f"{sha}.jpg").write_bytes(data)
        rows.append({"file": f"{label}/{sha}.jpg", "label": label, "sha256": sha, "group": sha,
                     "split": ("train", "train", "val", "test")[n % 4] if n >= 8 else
                     ("train", "train", "train", "train", "val", "val", "test", "test")[n]})
    split_file = folder.parent / "split.jsonl"
    split_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return split_file


@pytest.fixture(scope="module")
def two_views(repo_params: Params, tiny_train_params: TrainParams,
              tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny face network, the two-view records of the raw set, and the model trained on them."""
    from pipeline.ml.fit import train
    from pipeline.ml.network import build_model
    from pipeline.runtime.log import load_tensorflow
    from pipeline.stages.tfrecords import tfrecords

    load_tensorflow()
    work = tmp_path_factory.mktemp("two_views")
    split_file = _raw_set(work / "raw")
    build_model(tiny_train_params, 16, seed=1, augment=False).save(work / "face.keras")
    faces = repo_params.faces.model_copy(update={"detector": "mtcnn"})
    params = repo_params.tfrecords.model_copy(update={"image_size": 32, "crop": "views",
                                                      "face_size": 16, "workers": 1,
                                                      "encoding": "png"})
    report = tfrecords(split_file, work / "raw", work / "records", params, faces)
    trained = tiny_train_params.model_copy(update={"init_from": str(work / "face.keras"),
                                                   "view_dropout": 0.5})
    train(work / "records", work / "model", work / "reports", trained, seed=1)
    return {"work": work, "faces": faces, "report": report, "split": split_file,
            "train": trained}


def test_two_view_records_hold_the_whole_picture_and_the_face_as_predict_makes_them(
        two_views: dict) -> None:
    from pipeline.contracts import features
    from pipeline.vision.faces import FaceCrop
    from pipeline.vision.images import model_views

    work = two_views["work"]
    meta = features.read_meta(work / "records")
    assert meta["crop"]["kind"] == "views" and features.face_size(meta) == 16
    assert meta["crop"]["faces"]["detector"] == "mtcnn"
    assert sum(c["found"] for c in two_views["report"].faces.values()) == 12  # the portraits
    assert sum(c["none"] for c in two_views["report"].faces.values()) == 12  # the noise
    rows = {json.loads(line)["sha256"]: json.loads(line)
            for line in two_views["split"].read_text().splitlines()}
    crop = FaceCrop.of(meta["crop"])
    for record in features.dataset(work / "records", "test", 32):
        row = rows[record["sha256"].numpy().decode()]
        views = model_views((work / "raw" / row["file"]).read_bytes(), 32, "pad", crop=crop,
                            face_size=16)
        assert bool(record["face_found"]) == views.face_found
        assert np.array_equal(record["face"].numpy(), views.face)  # PNG: exactly predict's
        assert np.array_equal(record["image"].numpy(), views.pixels)  # the whole picture
        if not views.face_found:
            assert not views.face.any()  # black: the model judges the whole picture alone


@pytest.mark.slow  # save's export and a predict subprocess: CI runs it, test-fast does not
def test_two_view_model_reloads_safely_ships_to_litert_and_predict_can_abstain(
        two_views: dict, repo_params: Params) -> None:
    from pipeline.ml.model import load
    from pipeline.ml.network import FACE_NETWORK
    from pipeline.stages.evaluate import evaluate
    from pipeline.stages.save import save
    from pipeline.tools.predict import predict

    work = two_views["work"]
    model = load(work / "model" / "model.keras")  # safe_mode=True
    assert [i.name for i in model.inputs] == ["pixels", "face", "face_found"]
    assert model.get_layer(FACE_NETWORK).get_layer("block1_conv")  # the face network inside
    assert "view_dropout" not in {layer.name for layer in model.layers}  # training only
    metrics = evaluate(work / "model" / "model.keras", work / "records", work / "reports",
                       work / "evaluate", repo_params.evaluate, 1)
    parts = metrics["by_face"]
    assert parts["detector"] == "mtcnn"
    assert parts["with_face"]["images"] + parts["without_face"]["images"] == metrics["images"]
    test = two_views["report"].faces["test"]
    assert (parts["with_face"]["images"], parts["without_face"]["images"]) == (test["found"],
                                                                               test["none"])
    assert parts["without_face"]["share"] == round(test["none"] / metrics["images"], 6)
    card = save(work / "model" / "model.keras", work / "records", work / "evaluate" / "details.json",
                REPO / "params.yaml", work / "no.lock", work / "models")
    assert card["litert_max_difference"] <= 1e-4
    card_text = (work / "models" / "model_card.md").read_text()
    assert "## With and without a face" in card_text and "Two views (inputs" in card_text
    images = sorted((work / "raw").glob("*/*.jpg"))
    answers = {runtime: list(predict(images, work / "models", runtime=runtime))
               for runtime in ("litert", "keras")}
    for lite, keras_answer in zip(answers["litert"], answers["keras"], strict=True):
        assert abs(lite.probability - keras_answer.probability) <= 1e-4
    assert sum(a.face_found for a in answers["litert"]) == 12
    required = list(predict(images, work / "models", require_face=True))
    abstained = [a for a in required if a.label is None]
    assert len(abstained) == 12 and all(not a.face_found and a.abstained for a in abstained)
    assert all(a.label in ("happy", "sad") and a.face_found for a in required if a.label)
    # the command a user runs: one JSON line each, null label and the reason, exit 0
    noise = next(a.path for a in abstained)
    face = next(a.path for a in required if a.label)
    done = subprocess.run([sys.executable, "-m", "pipeline", "predict", "--require-face", noise,
                           face, "--model-dir", str(work / "models")], cwd=REPO,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(x["label"], x["face_found"]) for x in lines][0] == (None, False)
    assert lines[0]["abstained"] == "no face found (--require-face)"
    assert lines[1]["label"] in ("happy", "sad") and lines[1]["face_found"] is True


def test_a_face_view_without_a_face_network_is_one_line(two_views: dict) -> None:
    from pipeline.ml.fit import train

    work = two_views["work"]
    params = two_views["train"].model_copy(update={"init_from": ""})
    with pytest.raises(UserError, match="need a face network to see it; set train.init_from"):
        train(work / "records", work / "m2", work / "r2", params, seed=1)
    wrong = two_views["train"].model_copy(update={"init_from": str(work / "model" / "model.keras")})
    with pytest.raises(UserError, match="is no face network"):
        train(work / "records", work / "m3", work / "r3", wrong, seed=1)


def test_a_face_scan_copies_the_face_network_and_ships_as_it_trained(
        tiny_train_params: TrainParams, tmp_path: Path) -> None:
    import keras

    from pipeline.ml.model import compile_model, load
    from pipeline.ml.network import build_model, without_augmentation
    from pipeline.ml.transfer import body_layers, face_branch, set_trainable
    from pipeline.runtime.log import load_tensorflow
    from pipeline.stages.save import export_lite, random_inputs

    load_tensorflow()
    params = tiny_train_params.model_copy(update={"face_scan": [0.5, 1.0]})
    build_model(tiny_train_params, 16, seed=1, augment=False).save(tmp_path / "face.keras")
    face = face_branch(load(tmp_path / "face.keras"))
    model = build_model(params, 32, seed=1, face=face)
    scan = [layer for layer in model.layers if layer.name.startswith("scan_") and layer.weights]
    assert [w.shape for w in scan[0].weights] == [w.shape for w in face.get_layer("block1_conv").weights]
    set_trainable(model, None)  # the frozen phase freezes the scan with the face network
    assert all(not layer.trainable for layer in scan) and set(scan) <= set(body_layers(model))
    set_trainable(model, "")
    compile_model(model, 1e-3)
    inputs = random_inputs(model, 8)
    model.fit(inputs, np.array([0, 1] * 4, "float32"), epochs=1, verbose=0)
    inference = without_augmentation(model, params, 32)
    expected = np.asarray(model(inputs, training=False))
    # called as predict and the export call it (no `training`): no BatchNorm may train
    for _ in range(2):
        assert np.abs(np.asarray(inference(inputs)) - expected).max() == 0
    inference.save(tmp_path / "model.keras")
    reloaded = load(tmp_path / "model.keras")  # safe_mode=True
    assert np.abs(np.asarray(reloaded(inputs)) - expected).max() == 0
    reloaded.export(str(tmp_path / "serving"), format="tf_saved_model", verbose=False)
    assert export_lite(reloaded, tmp_path / "serving", tmp_path / "model.tflite") <= 1e-4
    keras.backend.clear_session()


@pytest.mark.slow  # three tiny trainings and a LiteRT export (~40 s): CI runs it
def test_members_average_in_one_file_and_a_crash_keeps_the_finished_ones(
        two_views: dict, repo_params: Params, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    import logging

    import keras

    from pipeline.ml import fit, members
    from pipeline.ml.model import load
    from pipeline.ml.phases import monitored
    from pipeline.ml.phases import phases as phases_of
    from pipeline.stages.evaluate import evaluate
    from pipeline.stages.save import random_inputs, save
    from pipeline.tools.predict import predict

    work, calls = two_views["work"], []
    params = two_views["train"].model_copy(update={"members": 2})
    real_phase = members.fit_phase

    def crashing(run, model, phase, seed, *rest):
        calls.append(seed)
        if calls.count(2) == 1:  # the second member's first phase, in the first run
            raise KeyboardInterrupt
        return real_phase(run, model, phase, seed, *rest)

    monkeypatch.setattr(members, "fit_phase", crashing)
    with pytest.raises(KeyboardInterrupt):
        fit.train(work / "records", work / "m_members", work / "r_members", params, seed=1)
    with caplog.at_level(logging.INFO, logger="pipeline.ml"):
        report = fit.train(work / "records", work / "m_members", work / "r_members", params, seed=1)
    assert "member 2 of 2 (seed 2)" in caplog.text  # the first was found finished: no ETA yet
    # TensorBoard's runs inside the folder the train stage's DVC out names: member 1's beside 0's
    assert sorted(p.name for p in (work / "r_members").iterdir()) == [
        "history.csv", "members.csv", "metrics.json", "tensorboard"]
    assert (work / "r_members" / "tensorboard" / "member-1" / "train").is_dir()
    # the first member was kept from the crashed run: only the second trained again
    phases = len(phases_of(params))
    assert calls == [1] * phases + [2] + [2] * phases
    assert report.epochs_run >= 1 and 0 <= report.val["accuracy"] <= 1
    model = load(work / "m_members" / "model.keras")  # safe_mode=True
    assert [i.name for i in model.inputs] == ["pixels", "face", "face_found"]
    inputs = random_inputs(model, 6)
    first, second = (np.asarray(model.get_layer(f"member_{n}")(inputs)) for n in (0, 1))
    assert np.abs(first - second).max() > 1e-4  # two seeds, two networks
    assert np.abs(np.asarray(model(inputs)) - (first + second) / 2).max() <= 1e-6
    # member 0 is the network a one-member run of the same seed trains
    single = load(work / "model" / "model.keras")
    assert np.abs(np.asarray(single(inputs)) - first).max() <= 1e-6
    # every member's epochs in members.csv, the first's also in history.csv (dvc plots)
    with (work / "r_members" / "members.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    own = {n: [r for r in rows if r["member"] == n] for n in ("1", "2")}
    assert {r["seed"] for r in own["1"]} == {"1"} and {r["seed"] for r in own["2"]} == {"2"}
    assert len(rows) == len(own["1"]) + len(own["2"])
    kept = [int(r["epoch"]) for r in rows if r["kept"] == "1"]
    assert len(kept) == 2 and kept[0] == report.best_epoch
    for n, epoch in zip(("1", "2"), kept, strict=True):  # kept: the least monitored val loss
        assert min(own[n], key=lambda r: float(r[monitored(params)]))["epoch"] == str(epoch)
    with (work / "r_members" / "history.csv").open() as handle:
        assert [r["val_loss"] for r in csv.DictReader(handle)] == [r["val_loss"] for r in own["1"]]
    # as a user gets it: evaluated, saved with its card and LiteRT file, and predict's answers
    metrics = evaluate(work / "m_members" / "model.keras", work / "records", work / "r_members",
                       work / "e_members", repo_params.evaluate, 1)
    assert metrics["best_epochs"] == kept
    settings = params_file(work / "members.yaml", train={"members": 2})
    card = save(work / "m_members" / "model.keras", work / "records",
                work / "e_members" / "details.json", settings, work / "no.lock",
                work / "shipped_members")
    assert card["litert_max_difference"] <= 1e-4
    text = (work / "shipped_members" / "model_card.md").read_text()
    assert "the mean of 2 networks' answers" in text
    assert f"Best epochs {kept[0]} and {kept[1]} (one per network averaged)" in text
    images = sorted((work / "raw").glob("*/*.jpg"))
    lite, full = (list(predict(images, work / "shipped_members", runtime=r))
                  for r in ("litert", "keras"))
    assert max(abs(a.probability - b.probability) for a, b in zip(lite, full, strict=True)) <= 1e-4
    assert sum(a.face_found for a in full) == 12
    keras.backend.clear_session()


def test_a_warm_start_or_face_view_from_an_ensemble_takes_its_first_member(
        tiny_train_params: TrainParams, tmp_path: Path) -> None:
    from pipeline.ml.model import load
    from pipeline.ml.network import build_model, ensemble
    from pipeline.ml.transfer import face_branch, warm_start
    from pipeline.runtime.log import load_tensorflow

    load_tensorflow()
    networks = [build_model(tiny_train_params, 16, seed=s, augment=False) for s in (1, 2)]
    ensemble(networks).save(tmp_path / "both.keras")
    fresh = build_model(tiny_train_params, 16, seed=3, augment=False)
    assert warm_start(fresh, tmp_path / "both.keras") >= 1
    conv = fresh.get_layer("block1_conv").get_weights()[0]
    assert np.array_equal(conv, networks[0].get_layer("block1_conv").get_weights()[0])
    assert not np.array_equal(conv, networks[1].get_layer("block1_conv").get_weights()[0])
    face = face_branch(load(tmp_path / "both.keras"))
    assert np.array_equal(face.get_layer("block1_conv").get_weights()[0], conv)
