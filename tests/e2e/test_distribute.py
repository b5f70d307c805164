"""Training under tf.distribute's MirroredStrategy, in a process of its own (two logical CPUs):
the path a multi-GPU machine takes."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from pipeline.config.train import TrainParams
from testing.project import REPO


def test_mirrored_training_over_two_logical_cpus(tiny_records: Path, tiny_train_params: TrainParams,
                                                 tmp_path: Path) -> None:
    """tf.distribute's MirroredStrategy over two logical CPU devices, as CI has no GPUs: a step
    takes batch_size x 2 images, and the model it saves predicts like any other."""
    params = tiny_train_params.model_copy(update={"distribute": "mirrored", "epochs": 1})
    script = f"""
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from pathlib import Path
from pipeline.config.params import TrainParams
from pipeline.ml.fit import train
params = TrainParams.model_validate(json.loads(sys.argv[1]))
report = train(Path({str(tiny_records)!r}), Path({str(tmp_path / 'm')!r}), Path({str(tmp_path / 'r')!r}),
               params, seed=5)
print(json.dumps({{"device": report.device}}))
"""
    result = subprocess.run([sys.executable, "-c", script, json.dumps(params.model_dump())],
                            capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mirrored over 2 replicas" in json.loads(result.stdout.strip().splitlines()[-1])["device"]
    from pipeline.ml.model import load

    pixels = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    assert load(tmp_path / "m" / "model.keras").predict_on_batch(pixels).shape == (2, 1)
    with (tmp_path / "r" / "history.csv").open() as handle:
        (row,) = list(csv.DictReader(handle))
    assert 0 < float(row["val_loss"]) < 10 and 0 <= float(row["val_accuracy"]) <= 1
