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


@pytest.mark.parametrize("backbone", ["mobilenet_v3_small", "efficientnet_b0"])
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


