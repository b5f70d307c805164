"""The save stage: the model to ship, its serving export, and its model card.

Writes ``models/model.keras`` (checked to reload with ``safe_mode=True``),
``models/serving/`` (``model.export``: a TensorFlow SavedModel taking uint8
pixels) and ``models/model_card.md`` + ``models/model_card.json``: data
version, params, test metrics, class names, input contract and date.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

import yaml

from pipeline.errors import UserError
from pipeline.params import load_params

logger = logging.getLogger(__name__)


def lock_outputs(lock_file: Path) -> dict[str, list[dict]] | None:
    """Each stage's outputs as ``dvc.lock`` records them (path, md5, ...); None without a lock."""
    try:
        lock = yaml.safe_load(lock_file.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        return None
    return {name: stage.get("outs", []) for name, stage in lock.get("stages", {}).items()}


def data_version(lock_file: Path, records: Path) -> dict[str, str]:
    """The tfrecords output as ``dvc.lock`` records it (DVC's content hash), if DVC ran it."""
    outputs = lock_outputs(lock_file)
    if outputs is None:
        return {"source": "no dvc.lock (stage run outside DVC)"}
    for out in outputs.get("tfrecords", []):
        if Path(out.get("path", "")) == records:
            return {"source": str(lock_file), "path": out["path"], "md5": out.get("md5", ""),
                    "files": str(out.get("nfiles", ""))}
    return {"source": f"{lock_file} has no tfrecords output {records}"}


def _card_markdown(card: dict) -> str:
    m, contract = card["metrics"], card["input"]
    per_class = "\n".join(f"| {name} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} | "
                          f"{c['support']} |" for name, c in m["per_class"].items())
    return f"""# Model card: {card["name"]}

Saved {card["date"]}. A CNN telling {" from ".join(contract["class_names"])} faces apart.

## Use
`happysad predict IMAGE...`, or load `model.keras` / `serving/` yourself. Input:
{contract["image_size"]}x{contract["image_size"]}x3 uint8 RGB pixels (0-255; the model scales
them to [0, 1] itself), each image resized with the `{contract["resize"]}` policy. Output:
the probability of **{contract["class_names"][1]}**; {card["threshold"]} is the threshold.

## Test split ({m["images"]} held-out images, never trained or early-stopped on)
| accuracy | precision | recall | F1 | ROC AUC | loss |
| --- | --- | --- | --- | --- | --- |
| {m["accuracy"]:.3f} | {m["precision"]:.3f} | {m["recall"]:.3f} | {m["f1"]:.3f} | \
{m["roc_auc"]:.3f} | {m["loss"]:.3f} |

| class | precision | recall | F1 | images |
| --- | --- | --- | --- | --- |
{per_class}

Best epoch {m["best_epoch"]}; train-val accuracy gap at that epoch {m["train_val_gap"]["accuracy"]:+.3f}
(large positive gaps mean overfitting).

## Data
Records `{card["data_version"].get("path", "?")}`, DVC md5 `{card["data_version"].get("md5", "?")}`;
images per split and class: {json.dumps(card["data_counts"])}.

## Params
```yaml
{yaml.safe_dump(card["params"], sort_keys=False).strip()}
```
"""


def save(trained: Path, records: Path, metrics_file: Path, params_file: Path, lock_file: Path,
         out: Path) -> dict:
    """Write the shipped model, its serving export and its card under ``out``; return the card."""
    import datetime

    import keras

    from pipeline import features

    if not trained.exists():
        raise UserError(f"{trained}: not found; run the train stage first (dvc repro train)")
    meta = features.read_meta(records)
    model = keras.models.load_model(trained, safe_mode=True, compile=False)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(trained, out / "model.keras")
    # what we ship must reload safely
    keras.models.load_model(out / "model.keras", safe_mode=True, compile=False)
    shutil.rmtree(out / "serving", ignore_errors=True)
    model.export(str(out / "serving"), format="tf_saved_model", verbose=False)
    params = load_params(params_file)
    metrics = json.loads(metrics_file.read_text())
    card = {
        "name": "happysad CNN", "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "files": {"keras": "model.keras", "serving": "serving/"},
        "input": json.loads((trained.parent / "input.json").read_text()),  # written by train
        "threshold": params.evaluate.threshold, "metrics": metrics,
        "data_version": data_version(lock_file, records), "data_counts": meta["counts"],
        "params": {"seed": params.seed, "tfrecords": params.tfrecords.model_dump(),
                   "train": params.train.model_dump()},
    }
    (out / "model_card.json").write_text(json.dumps(card, indent=2) + "\n")
    (out / "model_card.md").write_text(_card_markdown(card))
    return card


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trained", type=Path, default=Path("models/train/model.keras"))
    parser.add_argument("--records", type=Path, default=Path("data/tfrecords"))
    parser.add_argument("--metrics", type=Path, default=Path("reports/evaluate/details.json"),
                        help="the evaluate stage's figures (default: %(default)s)")
    parser.add_argument("--lock", type=Path, default=Path("dvc.lock"))
    parser.add_argument("--out", type=Path, default=Path("models"))


def run(args: argparse.Namespace) -> None:
    card = save(args.trained, args.records, args.metrics, args.params, args.lock, args.out)
    logger.info("save: %s, %s and model_card.md in %s (test accuracy %.3f)", card["files"]["keras"],
                card["files"]["serving"], args.out, card["metrics"]["accuracy"])
