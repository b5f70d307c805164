"""Benchmark of the model half of the DAG (train, evaluate, save), each figure beside its baseline.

1. The whole `dvc repro` on the default demo site, from an empty copy of the
   project on this machine's cores: wall time, test accuracy, training images/s.
2. Training images/s of the same model fed by the TFRecord input pipeline and by
   in-memory tensors, measured side by side (the input pipeline may cost <= 10%).
3. FER-2013 happy/sad from ``../shared/data`` (48x48 real faces): trained on
   ``train`` early-stopping on half of ``validation``, reported on the other half,
   with every near-duplicate of a training image removed from val and test.

Run: ``uv run python -m bench.model [--skip-dag] [--skip-fer] [--fer-epochs N]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

from bench import print_table

Row = tuple[str, str, str]
REPO = Path(__file__).resolve().parents[1]
FER_TAR = REPO.parent / "shared" / "data" / "fer2013-happysad-trainval.tar"


def dag_rows(work: Path) -> list[Row]:
    """`dvc repro` of the whole DAG in a fresh copy of the project (demo site regenerated)."""
    from testing.project import copy_project, tool_env

    project = copy_project(work / "project")
    env = tool_env()
    started = time.perf_counter()
    result = subprocess.run(["dvc", "repro"], cwd=project, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode:
        raise RuntimeError(f"dvc repro failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    metrics = json.loads((project / "reports" / "evaluate" / "details.json").read_text())
    trained = json.loads((project / "reports" / "train" / "metrics.json").read_text())
    speed = re.findall(r"\(([\d.]+) images/s\)", result.stdout + result.stderr)
    rate = speed[-1] if speed else "?"
    truth = true_label_accuracy(project)
    return [
        ("demo site: whole dvc repro", f"{seconds / 60:.1f} min",
         f"scrape to save on {os.cpu_count()} cores (target <= 15 min)"),
        ("demo site: test accuracy", f"{metrics['accuracy']:.3f}",
         f"ROC AUC {metrics['roc_auc']:.3f}, F1 {metrics['f1']:.3f} on {metrics['images']} held-out "
         f"images (target >= 0.95); best epoch {trained['best_epoch']} of {trained['epochs_run']}"),
        ("demo site: test accuracy, true labels", f"{truth[0]:.3f}",
         f"against ground_truth.json's labels: {truth[1]} of the test images are planted "
         "mislabels, which cap the figure above (target >= 0.98)"),
        ("demo site: training speed", f"{rate} img/s", "train split images per second of fit"),
    ]


def true_label_accuracy(project: Path) -> tuple[float, int]:
    """The test predictions scored against the demo site's true labels (its planted mislabels
    corrected), and how many test images are planted mislabels."""
    import csv

    truth = json.loads((project / "data" / "demo_site" / "ground_truth.json").read_text())
    true = {i["sha256"]: i["true_label"] or i["label"] for i in truth["images"] if i.get("sha256")}
    with (project / "reports" / "evaluate" / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    right = sum(true.get(r["sha256"], r["actual"]) == r["predicted"] for r in rows)
    planted = sum(true.get(r["sha256"], r["actual"]) != r["actual"] for r in rows)
    return right / len(rows), planted


def input_rows(records: Path, epochs: int) -> list[Row]:
    """The same model trained from TFRecords (tf.data) and from arrays already in memory."""
    import keras
    import numpy as np

    from pipeline.config.params import load_params
    from pipeline.contracts import features
    from pipeline.ml.device import configure_runtime
    from pipeline.ml.inputs import training_inputs
    from pipeline.ml.model import compile_model
    from pipeline.ml.network import build_model

    params = load_params(REPO / "params.yaml")
    meta = features.read_meta(records)
    size = meta["image_size"]
    train_data, steps, _ = training_inputs(records, meta, params.train, params.seed)
    pairs = list(features.labelled(records, "train", size).as_numpy_iterator())
    images, labels = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])

    def rate(fit) -> float:
        configure_runtime(params.seed)
        model = compile_model(build_model(params.train, size, params.seed), params.train.learning_rate)
        fit(model, 1)  # warm-up: tracing, and the TFRecord cache filling
        started = time.perf_counter()
        fit(model, epochs)
        return len(images) * epochs / (time.perf_counter() - started)

    def from_records(model: keras.Model, n: int) -> None:
        model.fit(train_data, epochs=n, steps_per_epoch=steps, verbose=0, shuffle=False)

    def from_memory(model: keras.Model, n: int) -> None:
        model.fit(images, labels, batch_size=params.train.batch_size, epochs=n, verbose=0,
                  shuffle=True)

    records_rate, memory_rate = rate(from_records), rate(from_memory)
    return [("training from TFRecords", f"{records_rate:.1f} img/s",
             f"x{records_rate / memory_rate:.2f} the same model fed in-memory tensors "
             f"({memory_rate:.1f} img/s; {len(images)} images at {size} px, {epochs} epochs; "
             "input may cost <= 10%)")]


def _fer_raw(tar: Path, work: Path) -> tuple[Path, dict[str, str]]:
    """FER images in a raw store (as if scraped), and which FER folder each file came from."""
    from pipeline.contracts.raw import RawRecord, RawStore

    store, lines, origin = RawStore(work / "raw"), [], {}
    with tarfile.open(tar) as archive:
        for member in archive:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) != 3:
                continue
            data = archive.extractfile(member).read()
            path, sniffed, _ = store.store(parts[1], data)
            origin[path] = parts[0]
            lines.append(RawRecord(
                url=f"fer2013/{member.name}", final_url=f"fer2013/{member.name}", page_url="",
                source="fer2013", query=parts[1], label=parts[1],
                sha256=hashlib.sha256(data).hexdigest(), path=path, bytes=len(data),
                content_type="image/jpeg", format=sniffed.format, width=sniffed.width,
                height=sniffed.height, licence=None, attribution=None, fetched_at="").to_json())
    (work / "raw" / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return work / "raw", origin


def fer_records(work: Path, image_size: int) -> tuple[Path, int]:
    """FER-2013 happy/sad as a records folder: FER train trains; validation faces with no
    near-duplicate among them are split by group hash into val and test."""
    from pipeline.config.params import load_params
    from pipeline.stages.clean import clean
    from pipeline.stages.tfrecords import tfrecords

    params = load_params(REPO / "params.yaml")
    raw, origin = _fer_raw(FER_TAR, work)
    clean(raw, work / "clean", params.clean.model_copy(update={"min_side": 48, "min_std": 3.0}))
    kept = [json.loads(line) for line in (work / "clean" / "images.jsonl").read_text().splitlines()]
    # A group with any FER-train member trains; validation-only groups go to val or test by a
    # hash of the group, so no test image has a near-duplicate among the training images.
    train_groups = {r["group"] for r in kept if origin[r["file"]] == "train"}
    copies = [r for r in map(json.loads, (work / "clean" / "rejected.jsonl").read_text().splitlines())
              if r["url"].startswith("fer2013/validation/")
              and r["reason"] in ("exact_duplicate", "near_duplicate", "label_conflict")]
    rows, dropped = [], len(copies)
    for r in kept:
        if origin[r["file"]] == "train":
            split = "train"
        elif r["group"] in train_groups:
            dropped += 1
            continue
        else:
            split = ("val", "test")[int(hashlib.sha256(r["group"].encode()).hexdigest(), 16) % 2]
        rows.append({**r, "split": split})
    (work / "split.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tfrecords(work / "split.jsonl", raw, work / "tfrecords",
              params.tfrecords.model_copy(update={"image_size": image_size, "resize": "stretch"}))
    return work / "tfrecords", dropped


def fer_rows(work: Path, image_size: int, epochs: int) -> list[Row]:
    from pipeline.config.params import load_params
    from pipeline.contracts import features
    from pipeline.ml.fit import train
    from pipeline.stages.evaluate import evaluate

    params = load_params(REPO / "params.yaml")
    _, dropped = fer_records(work, image_size)
    train_params = params.train.model_copy(update={"epochs": epochs})
    started = time.perf_counter()
    report = train(work / "tfrecords", work / "models", work / "reports" / "train", train_params,
                   params.seed)
    minutes = (time.perf_counter() - started) / 60
    metrics = evaluate(work / "models" / "model.keras", work / "tfrecords", work / "reports" / "train",
                       work / "reports" / "evaluate", params.evaluate)
    counts = features.read_meta(work / "tfrecords")["counts"]
    sizes = {s: sum(c.values()) for s, c in counts.items()}
    return [("FER-2013 happy/sad: test accuracy", f"{metrics['accuracy']:.3f}",
             f"ROC AUC {metrics['roc_auc']:.3f} on {sizes['test']} held-out faces (reference: "
             "small CNN 0.876 / 0.946, pretrained emotion model ~0.91, aim > 0.92)"),
            ("FER-2013 happy/sad: training", f"{minutes:.1f} min",
             f"{sizes['train']} train / {sizes['val']} val images at {image_size} px on "
             f"{report.device}; best epoch {report.best_epoch} of {report.epochs_run}; "
             f"{dropped} validation faces left out as copies of other faces; "
             f"train-val accuracy gap {report.gap['accuracy']:+.3f}")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-dag", action="store_true", help="skip the whole-DAG run")
    parser.add_argument("--skip-fer", action="store_true", help="skip FER-2013")
    parser.add_argument("--fer-size", type=int, default=64, help="FER image size (default 64)")
    parser.add_argument("--fer-epochs", type=int, default=30)
    parser.add_argument("--input-epochs", type=int, default=2)
    args = parser.parse_args(argv)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="happysad-bench-model-") as tmp:
        work = Path(tmp)
        if not args.skip_dag:
            rows += dag_rows(work)
            rows += input_rows(work / "project" / "data" / "tfrecords", args.input_epochs)
        if not args.skip_fer:
            if FER_TAR.exists():
                rows += fer_rows(work / "fer", args.fer_size, args.fer_epochs)
            else:
                rows.append(("FER-2013", "skipped", f"{FER_TAR} is not here"))
    print_table("happysad model benchmark", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
