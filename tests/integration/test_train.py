"""train, evaluate, save and predict on the tiny demo crawl at 32 px."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from pipeline.config.params import Params
from pipeline.config.train import TrainParams
from testing.fixtures import face_on_a_canvas, interrupted_after
from testing.project import REPO


def test_model_has_the_shapes_params_ask_for(tiny_train_params: TrainParams) -> None:
    import keras

    from pipeline.ml.network import build_model

    params = tiny_train_params.model_copy(update={"filters": [4, 8, 16], "kernel_size": 5,
                                                  "convs_per_block": 2})
    model = build_model(params, 64, seed=1)
    convs = [la for la in model.layers if isinstance(la, keras.layers.Conv2D)]
    norms = [la for la in model.layers if isinstance(la, keras.layers.BatchNormalization)]
    pools = [la for la in model.layers if isinstance(la, keras.layers.MaxPooling2D)]
    assert [c.filters for c in convs] == [4, 4, 8, 8, 16, 16] and convs[0].kernel_size == (5, 5)
    assert all(n.momentum == params.batchnorm_momentum for n in norms) and len(norms) == 6
    assert len(pools) == 3
    assert model.input.dtype == "uint8" and tuple(model.input.shape) == (None, 64, 64, 3)
    assert tuple(model.output.shape) == (None, 1)
    augment = model.get_layer("augment")
    assert (augment.flip, augment.rotation, augment.zoom) == (
        params.augment.flip, params.augment.rotation, params.augment.zoom)
    # inference leaves pixels alone: the same image gives the same probability twice
    pixels = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    assert np.array_equal(model(pixels, training=False), model(pixels, training=False))


def test_training_writes_model_history_and_metrics(trained: Path) -> None:
    assert (trained / "models" / "train" / "model.keras").stat().st_size > 0
    contract = json.loads((trained / "models" / "train" / "input.json").read_text())
    assert contract["image_size"] == 32 and contract["class_names"] == ["happy", "sad"]
    with (trained / "reports" / "train" / "history.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert {"loss", "val_loss", "accuracy", "val_accuracy", "learning_rate"} <= set(rows[0])
    metrics = json.loads((trained / "reports" / "train" / "metrics.json").read_text())
    # the kept epoch is the one with the lowest monitored val loss, not merely one that ran
    monitored = "val_loss_smoothed" if "val_loss_smoothed" in rows[0] else "val_loss"
    losses = [float(r[monitored]) for r in rows]
    assert metrics["epochs_run"] == 2 and metrics["best_epoch"] == 1 + losses.index(min(losses))
    assert metrics["gap"]["accuracy"] == pytest.approx(
        metrics["train"]["accuracy"] - metrics["val"]["accuracy"], abs=1e-5)
    assert not (trained / "models" / ".backup").exists() or not any(
        (trained / "models" / ".backup").iterdir())  # finished: no resume state left


def test_same_seed_gives_identical_weights(tiny_records: Path, tiny_train_params: TrainParams,
                                           trained: Path, tmp_path: Path) -> None:
    import keras

    from pipeline.ml.fit import train

    train(tiny_records, tmp_path / "m", tmp_path / "r", tiny_train_params, seed=5)
    first = keras.models.load_model(trained / "models" / "train" / "model.keras").get_weights()
    again = keras.models.load_model(tmp_path / "m" / "model.keras").get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    train(tiny_records, tmp_path / "m6", tmp_path / "r6", tiny_train_params, seed=6)
    other = keras.models.load_model(tmp_path / "m6" / "model.keras").get_weights()
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_the_saved_model_never_augments(trained: Path) -> None:
    import keras

    model = keras.models.load_model(trained / "models" / "train" / "model.keras", safe_mode=True)
    assert "augment" not in [layer.name for layer in model.layers]
    pixels = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    assert np.array_equal(model(pixels), model(pixels, training=False))  # however it is called


def _split_ids(records: Path, split: str) -> set[str]:
    from pipeline.contracts import features

    return {r["sha256"].numpy().decode() for r in features.dataset(records, split, 32)}


def test_evaluation_reads_the_test_split_only(trained: Path, tiny_records: Path,
                                              evaluated: dict) -> None:
    out, metrics = trained / "reports" / "evaluate", evaluated
    with (out / "predictions.csv").open() as handle:
        evaluated = {r["sha256"] for r in csv.DictReader(handle)}
    assert evaluated == _split_ids(tiny_records, "test")
    assert not evaluated & (_split_ids(tiny_records, "train") | _split_ids(tiny_records, "val"))
    assert metrics["images"] == len(evaluated)
    assert sum(map(sum, metrics["confusion_matrix"]["counts"])) == len(evaluated)
    for name in ("learning_curves", "confusion", "roc", "precision_recall", "mistakes"):
        assert (out / "plots" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"


def test_metrics_match_a_hand_count() -> None:
    from pipeline.ml.scoring import Scores, summary
    from pipeline.stages.evaluate import roc_curve

    scores = Scores(["a", "b", "c", "d", "e"], np.array([0, 0, 1, 1, 1]),
                    np.array([0.1, 0.6, 0.4, 0.8, 0.9]))
    m = summary(scores, ["happy", "sad"], 0.5)
    assert m["confusion_matrix"]["counts"] == [[1, 1], [1, 2]]
    assert m["accuracy"] == pytest.approx(3 / 5) and m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3) and m["roc_auc"] == pytest.approx(5 / 6)
    fpr, tpr, _ = roc_curve(np.array([1, 0, 1]), np.array([0.5, 0.5, 0.2]))  # a tie counts once
    assert fpr.tolist() == [0.0, 1.0, 1.0] and tpr.tolist() == [0.0, 0.5, 1.0]


def test_saved_model_and_export_predict_what_the_trained_one_does(saved: Path, trained: Path,
                                                                  tiny_records: Path) -> None:
    import keras
    import tensorflow as tf

    from pipeline.contracts import features

    images = np.stack([r["image"].numpy() for r in features.dataset(tiny_records, "test", 32)])
    in_memory = keras.models.load_model(trained / "models" / "train" / "model.keras")(images)
    shipped = keras.models.load_model(saved / "model.keras", safe_mode=True)(images)
    export = tf.saved_model.load(str(saved / "serving"))  # keep a reference: it owns the variables
    served = export.serve(tf.constant(images))
    np.testing.assert_allclose(shipped, in_memory, rtol=0, atol=0)
    np.testing.assert_allclose(served, in_memory, atol=1e-6)
    card = json.loads((saved / "model_card.json").read_text())
    assert card["input"]["class_names"] == ["happy", "sad"] and card["metrics"]["images"] == len(images)
    assert "no dvc.lock" in card["data_version"]["source"]
    text = (saved / "model_card.md").read_text()
    assert "| accuracy |" in text
    for section in ("## Intended use", "## Out-of-scope uses", "## Training data and its limits",
                    "## How it was evaluated"):  # Mitchell et al.'s model card sections
        assert section in text
    assert "synthetic cartoon faces" in text and "mental" in text
    assert card["files"]["litert"] == "model.tflite" and card["litert_max_difference"] <= 1e-4


def test_predict_reports_a_corrupt_file_and_labels_the_rest(saved: Path, tiny_raw: Path,
                                                            tiny_records: Path, tmp_path: Path) -> None:
    import keras

    from pipeline.vision.images import square_rgb

    folder = tmp_path / "in"
    folder.mkdir()
    kept = {json.loads(line)["file"] for line in
            (tiny_records.parent / "clean" / "images.jsonl").read_text().splitlines()}
    goods = sorted(tiny_raw / f for f in kept if f.endswith(".jpg"))[:3]
    for good in goods:
        shutil.copy(good, folder / good.name)
    (folder / "broken.jpg").write_bytes(goods[0].read_bytes()[:300])
    (folder / "notes.txt").write_text("not an image, and not picked from a folder")
    latin1 = folder / os.fsdecode(b"caf\xe9.jpg")  # a name that is not UTF-8
    shutil.copy(goods[0], latin1)
    os.mkfifo(folder / "pipe.jpg")  # found in the folder: reported, not waited on
    os.mkfifo(tmp_path / "named.fifo")  # named on the command line: the same
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["clean"]["min_side"] = 32  # the tiny site's faces are 48-80 px
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = subprocess.run([sys.executable, "-m", "pipeline", "--params", str(tmp_path / "params.yaml"),
                             "predict", str(folder), str(tmp_path / "named.fifo"), "--model-dir",
                             str(saved)], cwd=REPO, capture_output=True, timeout=120)
    assert result.returncode == 1
    stderr = result.stderr.decode("utf-8")  # strict: every path printed is valid UTF-8
    errors = {line.split(": ")[1].rsplit("/", 1)[1]: line for line in stderr.splitlines()
              if line.startswith("happysad predict:")}
    assert sorted(errors) == ["broken.jpg", "named.fifo", "pipe.jpg"] and "Traceback" not in stderr
    assert all("a FIFO (named pipe), not a regular file" in errors[n] for n in ("named.fifo", "pipe.jpg"))
    lines = [json.loads(line) for line in result.stdout.decode("utf-8").splitlines()]
    shown = {str(latin1).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace"):
             latin1, **{str(folder / g.name): folder / g.name for g in goods}}
    assert sorted(p["path"] for p in lines) == sorted(shown)  # caf\xe9.jpg shown as \\xe9
    model = keras.models.load_model(saved / "model.keras")
    for line in lines:
        p_sad = float(model(square_rgb(shown[line["path"]].read_bytes(), 32, "pad")[None])[0, 0])
        assert line["probabilities"]["sad"] == pytest.approx(p_sad, abs=1e-5)
        assert line["label"] == ("sad" if p_sad >= 0.5 else "happy")
        assert line["probability"] == pytest.approx(max(p_sad, 1 - p_sad), abs=1e-5)
        assert isinstance(line["face_found"], bool) and line["abstained"] is None


def test_predict_crops_the_face_when_the_model_was_trained_on_crops(
        saved: Path, repo_params: Params, tmp_path: Path) -> None:
    """A model card whose input contract says crop face: predict sees the face, not the canvas."""
    import keras

    from pipeline.stages.tfrecords import crop_contract
    from pipeline.tools.predict import predict
    from pipeline.vision.faces import FaceCrop
    from pipeline.vision.images import encode, square_rgb

    model_dir = tmp_path / "models"
    shutil.copytree(saved, model_dir)
    contract = crop_contract(repo_params.tfrecords.model_copy(update={"crop": "face"}),
                             repo_params.faces)
    card = json.loads((model_dir / "model_card.json").read_text())
    card["input"]["crop"] = contract
    (model_dir / "model_card.json").write_text(json.dumps(card))
    canvas, _ = face_on_a_canvas()
    (tmp_path / "face.png").write_bytes(encode(canvas, "png"))
    (line,) = predict([tmp_path / "face.png"], model_dir, runtime="keras")
    model = keras.models.load_model(saved / "model.keras")
    data = (tmp_path / "face.png").read_bytes()
    cropped = float(model(square_rgb(data, 32, "pad", crop=FaceCrop.of(contract))[None])[0, 0])
    whole = float(model(square_rgb(data, 32, "pad")[None])[0, 0])
    assert line.probabilities["sad"] == pytest.approx(cropped, abs=1e-5)
    assert abs(cropped - whole) > 1e-4  # the crop changed what the model saw


def test_predict_labels_at_the_cards_threshold_on_litert_without_tensorflow(
        saved: Path, tiny_raw: Path, tmp_path: Path) -> None:
    """LiteRT answers as Keras does (within the export's 1e-4), starts no TensorFlow, and the
    label follows the card's threshold unless --threshold overrides it."""
    from pipeline.tools.predict import predict

    images = sorted(p for p in (tiny_raw / "happy").iterdir() if p.suffix == ".jpg")[:3]
    images += sorted(p for p in (tiny_raw / "sad").iterdir() if p.suffix == ".jpg")[:3]
    lite = list(predict(images, saved, on_error=lambda *_: None, runtime="litert"))
    slow = list(predict(images, saved, on_error=lambda *_: None, runtime="keras"))
    assert len(lite) == len(slow) > 0
    for a, b in zip(lite, slow, strict=True):
        assert abs(a.probabilities["sad"] - b.probabilities["sad"]) <= 1e-4
    card_dir = shutil.copytree(saved, tmp_path / "models", ignore=shutil.ignore_patterns("production*"))
    card = json.loads((card_dir / "model_card.json").read_text())
    p_sad = sorted(x.probabilities["sad"] for x in lite)
    card["threshold"] = (p_sad[0] + p_sad[-1]) / 2 if p_sad[0] < p_sad[-1] else p_sad[0]
    (card_dir / "model_card.json").write_text(json.dumps(card))
    labels = [x.label for x in predict(images, card_dir, on_error=lambda *_: None)]
    assert labels == ["sad" if x.probabilities["sad"] >= card["threshold"] else "happy" for x in lite]
    assert {x.label for x in predict(images, card_dir, threshold=1e-9)} == {"sad"}

    probe = ("import sys; from pipeline.cli import main; code = main(sys.argv[1:]); "
             "print('tensorflow' in sys.modules, file=sys.stderr); sys.exit(code)")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text().replace("min_side: 64", "min_side: 32"))
    ran = subprocess.run([sys.executable, "-c", probe, "--params", str(params), "predict",
                          "--model-dir", str(card_dir), *map(str, images)],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert ran.returncode == 0 and ran.stderr.strip().endswith("False"), ran.stderr
    assert len(ran.stdout.splitlines()) == len(images)
    missing = subprocess.run([sys.executable, "-c", probe, "predict", "--model-dir",
                              str(tmp_path / "nothing"), str(images[0])],
                             capture_output=True, text=True, env=env, cwd=REPO)
    assert missing.returncode == 2 and missing.stderr.splitlines() == [
        f"happysad predict: error: {tmp_path / 'nothing'}: no model.keras and model_card.json; run "
        "`make run` (the retrain flow promotes a model there), or pass --model-dir models for the "
        "last one `dvc repro` trained", "False"]




def test_an_interrupted_training_resumes_from_its_last_epoch(
        tiny_records: Path, tiny_train_params: TrainParams, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:

    from pipeline.ml import callbacks
    from pipeline.ml import fit as train_module

    real_log = callbacks.EpochLog
    crashing_log = interrupted_after(epoch=0)  # Ctrl-C once epoch 1 is saved

    params = tiny_train_params.model_copy(update={"epochs": 3, "early_stopping_patience": 5})
    monkeypatch.setattr(callbacks, "EpochLog", crashing_log)
    with pytest.raises(KeyboardInterrupt):
        train_module.train(tiny_records, tmp_path / "models" / "train", tmp_path / "r", params, seed=5)
    assert not (tmp_path / "models" / "train" / "model.keras").exists()
    assert list((tmp_path / "models" / ".backup").iterdir())  # resume state kept
    monkeypatch.setattr(callbacks, "EpochLog", real_log)
    with caplog.at_level("INFO", logger="pipeline.ml"):
        report = train_module.train(tiny_records, tmp_path / "models" / "train", tmp_path / "r",
                                    params, seed=5)
    fitted = [r.getMessage().split(":")[0].split("/")[0] for r in caplog.records
              if r.getMessage().startswith("epoch") and r.levelno == logging.INFO]
    assert fitted == ["epoch 2", "epoch 3"]  # epoch 1 was not trained again
    assert report.epochs_run == 3
    with (tmp_path / "r" / "history.csv").open() as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == ["1", "2", "3"]


def test_a_resumed_training_is_the_run_it_would_have_been(
        tiny_records: Path, tiny_train_params: TrainParams, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed after epoch 2 of 4 and resumed: every epoch's loss, val loss and learning rate
    equal an uninterrupted run's (optimizer state, RNG state, data order and the plateau and
    early-stopping counters all come back). The learning rate halves after one flat epoch,
    so a lost plateau counter would show."""

    from pipeline.ml import callbacks
    from pipeline.ml import fit as train_module

    params = tiny_train_params.model_copy(update={
        "epochs": 4, "early_stopping_patience": 10, "reduce_lr_patience": 1,
        "reduce_lr_factor": 0.5})

    def history(root: Path) -> list[dict[str, float]]:
        with (root / "r" / "history.csv").open() as handle:
            return [{k: float(row[k]) for k in ("loss", "val_loss", "learning_rate")}
                    for row in csv.DictReader(handle)]

    train_module.train(tiny_records, tmp_path / "whole" / "models" / "train",
                       tmp_path / "whole" / "r", params, seed=7)
    real_log = callbacks.EpochLog
    crashing_log = interrupted_after(epoch=1)  # killed once epoch 2 is saved

    resumed = tmp_path / "resumed"
    monkeypatch.setattr(callbacks, "EpochLog", crashing_log)
    with pytest.raises(KeyboardInterrupt):
        train_module.train(tiny_records, resumed / "models" / "train", resumed / "r", params, seed=7)
    monkeypatch.setattr(callbacks, "EpochLog", real_log)
    train_module.train(tiny_records, resumed / "models" / "train", resumed / "r", params, seed=7)
    whole, again = history(tmp_path / "whole"), history(resumed)
    assert len(whole) == len(again) == 4
    for epoch, (a, b) in enumerate(zip(whole, again, strict=True), start=1):
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), (epoch, key, a, b)


def _overconfident(models: Path, dest: Path) -> Path:
    """``models``' shipped files with +6 on the output's bias: every image looks `sad`, so the
    cross-entropy of a model trained to minimise it gets clearly worse."""
    import keras

    shutil.copytree(models, dest, ignore=shutil.ignore_patterns("production*", "promotions.jsonl"))
    model = keras.models.load_model(dest / "model.keras", safe_mode=True, compile=False)
    kernel, bias = model.get_layer("probability").get_weights()
    model.get_layer("probability").set_weights([kernel, bias + 6.0])
    model.save(dest / "model.keras")
    return dest


def _settings(repo_params: Params, rule: object) -> SimpleNamespace:
    """What promote reads: its rule, evaluate's section and the seed."""
    return SimpleNamespace(seed=repo_params.seed, promote=rule, evaluate=repo_params.evaluate)


def _loss_as_predict_sees_it(production: Path, predictions: Path, raw: Path) -> float:
    """The champion's test loss from ``happysad predict``'s own code on the raw test images."""
    from pipeline.contracts.predictions import read_predictions
    from pipeline.tools.predict import predict

    test = read_predictions(predictions)
    files = sorted(p for p in raw.glob("*/*") if p.stem in test)
    answers = list(predict(files, production))
    assert len(answers) == len(files) == len(test)
    positive = json.loads((production / "model_card.json").read_text())["input"]["class_names"][1]
    probability = np.clip([a.probabilities[positive] for a in answers], 1e-7, 1 - 1e-7)
    actual = np.array([test[f.stem][0] for f in files])
    return float(-np.mean(actual * np.log(probability) + (1 - actual) * np.log(1 - probability)))


def test_promotion_keeps_a_better_champion_and_replaces_a_worse_one(
        saved: Path, trained: Path, tiny_records: Path, tiny_raw: Path, repo_params: Params,
        tmp_path: Path) -> None:
    from pipeline.config.promote import PromoteParams
    from pipeline.stages.evaluate import evaluate
    from pipeline.tools.promote import promote

    settings = _settings(repo_params, PromoteParams(metric="loss", margin=0.0, confidence=0.9))
    good = shutil.copytree(saved, tmp_path / "good",
                           ignore=shutil.ignore_patterns("production*", "promotions.jsonl"))
    bad = _overconfident(saved, tmp_path / "bad")
    metrics = {"good": trained / "reports" / "evaluate" / "metrics.json",
               "bad": tmp_path / "bad-eval" / "metrics.json"}
    evaluate(bad / "model.keras", tiny_records, trained / "reports" / "train", tmp_path / "bad-eval",
             repo_params.evaluate)
    loss = {name: json.loads(path.read_text())["loss"] for name, path in metrics.items()}
    assert loss["bad"] > loss["good"] + 0.5

    for challenger, champion in (("good", "bad"), ("bad", "good")):
        models = {"good": good, "bad": bad}[challenger]
        shutil.rmtree(models / "production", ignore_errors=True)
        shutil.copytree({"good": good, "bad": bad}[champion], models / "production",
                        ignore=shutil.ignore_patterns("production*", "promotions.jsonl"))
        champion_bytes = (models / "production" / "model.keras").read_bytes()
        out = tmp_path / f"{challenger}-challenges"
        decision = promote(models, metrics[challenger], tiny_raw, out, settings, run_name=challenger)
        # The champion was scored on the challenger's test images, as predict prepares them.
        expected = _loss_as_predict_sees_it(models / "production",
                                            metrics[challenger].parent / "predictions.csv",
                                            tiny_raw)
        assert decision["champion"] == pytest.approx(expected, abs=5e-4)  # predict rounds to 6 digits
        assert decision["paired_test"]["images"] == decision["test_images"]
        assert decision["promoted"] == (challenger == "good")
        shipped = (models / "production" / "model.keras").read_bytes()
        assert shipped == ((models / "model.keras").read_bytes() if decision["promoted"]
                           else champion_bytes)
        recorded = json.loads((out / "decision.json").read_text())
        assert recorded["promoted"] == decision["promoted"] and recorded["run"] == challenger
        assert ("beats" if decision["promoted"] else "the champion stays") in recorded["reason"]
        log = (models / "promotions.jsonl").read_text().splitlines()
        assert json.loads(log[-1])["reason"] == recorded["reason"]


def test_a_champion_with_another_input_contract_is_scored_through_its_own(
        saved: Path, trained: Path, tiny_raw: Path, repo_params: Params, tmp_path: Path) -> None:
    """A champion trained on face crops, stretched, is scored on the challenger's test images
    prepared its own way (face crops, stretched), not refused and not fed the challenger's."""
    from pipeline.config.promote import PromoteParams
    from pipeline.tools.promote import promote

    models = shutil.copytree(saved, tmp_path / "models",
                             ignore=shutil.ignore_patterns("production*", "promotions.jsonl"))
    shutil.copytree(saved, models / "production",
                    ignore=shutil.ignore_patterns("production*", "promotions.jsonl"))
    (models / "production" / "model.keras").write_bytes(
        _overconfident(saved, tmp_path / "other").joinpath("model.keras").read_bytes())
    card_path = models / "production" / "model_card.json"
    card = json.loads(card_path.read_text())
    card["input"] |= {"resize": "stretch", "crop": {
        "kind": "face", "margin": 0.2, "faces": repo_params.faces.model_dump()}}
    card_path.write_text(json.dumps(card))
    predictions = trained / "reports" / "evaluate" / "predictions.csv"
    expected = _loss_as_predict_sees_it(models / "production", predictions, tiny_raw)
    decision = promote(models, trained / "reports" / "evaluate" / "metrics.json", tiny_raw,
                       tmp_path / "out", _settings(repo_params, PromoteParams(
                           metric="loss", margin=0.0, confidence=0.9)))
    assert "cannot be scored" not in decision["reason"] and decision["paired_test"] is not None
    assert decision["champion"] == pytest.approx(expected, abs=5e-4)  # predict rounds to 6 digits


def test_promotion_margin_and_direction() -> None:
    from pipeline.tools.promote import decide

    assert decide(0.80, None, "roc_auc", 0.0)[0]  # the first model is promoted
    assert decide(0.91, 0.90, "roc_auc", 0.0)[0]
    assert not decide(0.91, 0.90, "roc_auc", 0.02)[0]  # not by more than the margin
    assert not decide(0.90, 0.90, "accuracy", 0.0)[0]  # a tie keeps the champion
    assert decide(0.30, 0.40, "loss", 0.05)[0] and not decide(0.40, 0.30, "loss", 0.0)[0]


def test_a_diverging_run_stops_and_ships_nothing(tiny_records: Path, tiny_train_params: TrainParams,
                                                tmp_path: Path) -> None:
    from pipeline.ml.fit import train
    from pipeline.runtime.errors import UserError

    # Adam steps by about the learning rate whatever the gradient: 1e38 overflows float32 at once
    exploding = tiny_train_params.model_copy(update={"learning_rate": 1e38, "epochs": 3})
    with pytest.raises(UserError, match=r"training diverged: the loss became (nan|inf) at epoch 1"):
        train(tiny_records, tmp_path / "models" / "train", tmp_path / "r", exploding, seed=5)
    assert not (tmp_path / "models" / "train" / "model.keras").exists()
    assert not list((tmp_path / "models" / ".backup").glob("*"))  # no NaN state to resume from


def test_a_broken_model_is_refused_by_evaluate_save_promote_and_predict(
        saved: Path, trained: Path, tiny_records: Path, tiny_raw: Path, repo_params: Params,
        tmp_path: Path) -> None:
    import keras

    from pipeline.config.promote import PromoteParams
    from pipeline.runtime.errors import UserError
    from pipeline.stages.evaluate import evaluate
    from pipeline.stages.save import save
    from pipeline.tools.predict import predict
    from pipeline.tools.promote import promote

    broken = shutil.copytree(saved, tmp_path / "models", ignore=shutil.ignore_patterns(
        "production*", "promotions.jsonl", "model.tflite"))
    model = keras.models.load_model(broken / "model.keras", safe_mode=True, compile=False)
    kernel, bias = model.get_layer("probability").get_weights()
    model.get_layer("probability").set_weights([kernel * np.nan, bias])
    model.save(broken / "model.keras")
    with pytest.raises(UserError, match="non-finite probabilities on"):
        evaluate(broken / "model.keras", tiny_records, trained / "reports" / "train",
                 tmp_path / "eval", repo_params.evaluate)
    nan_metrics = tmp_path / "nan.json"
    good = json.loads((trained / "reports" / "evaluate" / "details.json").read_text())
    nan_metrics.write_text(json.dumps({**good, "loss": float("nan")}))
    with pytest.raises(UserError, match="loss is not a finite number"):
        save(broken / "model.keras", tiny_records, nan_metrics, REPO / "params.yaml",
             tmp_path / "dvc.lock", tmp_path / "shipped")
    assert not (tmp_path / "shipped").exists()  # nothing written
    with pytest.raises(UserError, match="loss is not a finite number"):
        promote(broken, nan_metrics, tiny_raw, tmp_path / "promote",
                _settings(repo_params, PromoteParams(metric="loss", margin=0.0, confidence=0.9)))
    assert not (broken / "production").exists()
    errors: list[str] = []
    images = sorted(p for p in (tiny_raw / "happy").iterdir() if p.suffix == ".jpg")[:2]
    labelled = list(predict(images, broken, on_error=lambda p, why: errors.append(why),
                            runtime="keras"))
    assert labelled == [] and len(errors) == 2 and "non-finite probability" in errors[0]


def test_bad_model_files_are_one_line_errors(saved: Path, tmp_path: Path) -> None:
    """Truncated, not a zip, a broken config, a Lambda layer that safe mode refuses, a card
    without its input contract: each is one line naming the file, never a traceback."""
    import keras

    whole = (saved / "model.keras").read_bytes()
    cases = {"truncated": whole[: len(whole) // 2], "not-a-zip": b"<html>not a model</html>"}
    for name, data in cases.items():
        (tmp_path / name).mkdir()
        shutil.copy(saved / "model_card.json", tmp_path / name / "model_card.json")
        (tmp_path / name / "model.keras").write_bytes(data)
    (tmp_path / "bad-config").mkdir()
    shutil.copy(saved / "model_card.json", tmp_path / "bad-config" / "model_card.json")
    with zipfile.ZipFile(saved / "model.keras") as source, zipfile.ZipFile(
            tmp_path / "bad-config" / "model.keras", "w") as target:
        for item in source.infolist():
            target.writestr(item, b"{not json" if item.filename == "config.json" else source.read(item))
    (tmp_path / "lambda").mkdir()
    shutil.copy(saved / "model_card.json", tmp_path / "lambda" / "model_card.json")
    inputs = keras.Input((32, 32, 3))
    keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs)).save(
        tmp_path / "lambda" / "model.keras")
    (tmp_path / "no-input").mkdir()
    shutil.copy(saved / "model.keras", tmp_path / "no-input" / "model.keras")
    card = json.loads((saved / "model_card.json").read_text())
    del card["input"]
    (tmp_path / "no-input" / "model_card.json").write_text(json.dumps(card))
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (96, 96), (120, 30, 200)).save(image)
    from pipeline.runtime.errors import UserError
    from pipeline.tools.predict import predict

    for name, message in (("truncated", "not a Keras model file"), ("not-a-zip", "not a Keras model file"),
                          ("bad-config", "cannot be loaded as a Keras model"),
                          ("lambda", "safe mode will not run"),
                          ("no-input", "not a model card the save stage wrote")):
        with pytest.raises(UserError) as raised:  # the CLI prints a UserError as its one line
            list(predict([image], tmp_path / name, runtime="keras"))
        text = str(raised.value)
        assert "\n" not in text and message in text and str(tmp_path / name) in text, text


def test_smoothed_val_loss_picks_the_kept_epoch(tiny_records: Path, tiny_train_params: TrainParams,
                                                tmp_path: Path) -> None:
    from pipeline.ml.fit import train

    params = tiny_train_params.model_copy(update={"epochs": 4, "val_loss_smoothing": 0.5,
                                                  "early_stopping_patience": 10})
    report = train(tiny_records, tmp_path / "m", tmp_path / "r", params, seed=5)
    with (tmp_path / "r" / "history.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    raw = [float(r["val_loss"]) for r in rows]
    expected = [raw[0]]
    for value in raw[1:]:
        expected.append(0.5 * expected[-1] + 0.5 * value)  # the EMA, weight 0.5 on the past
    assert [float(r["val_loss_smoothed"]) for r in rows] == pytest.approx(expected, abs=1e-5)
    assert report.best_epoch == 1 + int(np.argmin(expected))


@pytest.mark.slow
def test_a_shipped_model_answers_by_its_card_whatever_params_yaml_says_later(
        saved: Path, tiny_raw: Path, tmp_path: Path) -> None:
    """params.yaml edited after the model was saved (the next training's image rules and face
    finder, and a section broken outright): predict and serve-model answer exactly as before,
    and refuse exactly the images they refused; the card carries what they apply."""
    import urllib.request

    from testing.project import params_file
    from testing.serving import ServeModel

    model_dir = Path(shutil.copytree(saved, tmp_path / "production",
                                     ignore=shutil.ignore_patterns("production*")))
    card = json.loads((model_dir / "model_card.json").read_text())
    assert card["accepts"]["min_side"] == 32 and card["faces"]["detector"]
    images = sorted(p for p in tiny_raw.glob("*/*") if p.suffix in (".jpg", ".png"))[:8]
    tiny = params_file(tmp_path / "then.yaml", clean={"min_side": 32})
    later = params_file(tmp_path / "later.yaml", clean={"min_side": 4000, "formats": ["GIF"]},
                        faces={"detector": "no-such-finder"}, train={"epochs": -1})

    def answers(params: Path) -> tuple[list[dict], str]:
        done = subprocess.run([sys.executable, "-m", "pipeline", "predict", "--params", str(params),
                               "--model-dir", str(model_dir), *map(str, images)],
                              capture_output=True, text=True, timeout=300, cwd=tmp_path)
        return [json.loads(line) for line in done.stdout.splitlines()], done.stderr

    then, then_errors = answers(tiny)
    assert len(then) == len(images) - then_errors.count("; skipped\n") and then
    now, now_errors = answers(later)
    assert now == then
    assert [line for line in now_errors.splitlines() if line.endswith("; skipped")] == [
        line for line in then_errors.splitlines() if line.endswith("; skipped")]
    import base64

    service = ServeModel(["--model-dir", str(model_dir), "--params", str(later), "--face-found"],
                         tmp_path)
    try:
        labelled = [Path(line["path"]) for line in then]
        body = json.dumps({"instances": [{"b64": base64.b64encode(p.read_bytes()).decode()}
                                         for p in labelled]}).encode()
        request = urllib.request.Request(f"{service.url}/v1/models/happysad:predict", body,
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            rows = json.loads(response.read())["predictions"]
    finally:
        service.stop()
    for row, line in zip(rows, then, strict=True):
        assert (row["label"], row["face_found"]) == (line["label"], line["face_found"])
        assert row["probability"] == pytest.approx(line["probability"], abs=1e-5)
