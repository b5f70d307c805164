"""The save stage: the model to ship, its serving export, and its model card.

Writes ``models/model.keras`` (checked to reload with ``safe_mode=True``),
``models/serving/`` (``model.export``: a TensorFlow SavedModel taking uint8
pixels), ``models/model.tflite`` (LiteRT, for a fast ``predict``; checked to
match the Keras model within ``LITE_TOLERANCE``) and ``models/model_card.md`` +
``models/model_card.json``: the sections of a model card (Mitchell et al. 2019):
intended and out-of-scope uses, training data and its limits, how it was
evaluated, with the data version, params, test metrics, class names, threshold,
input contract and date. Every reader takes the threshold and class names from it.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

import yaml

from pipeline.config.clean import CleanParams, ImageRules
from pipeline.config.evaluate import EvaluateParams
from pipeline.config.faces import FacesParams
from pipeline.config.loader import load_sections
from pipeline.config.tfrecords import TfrecordsParams
from pipeline.config.train import TrainParams
from pipeline.contracts.export import LITE_FILE, lock_outputs
from pipeline.runtime.entry import main
from pipeline.runtime.errors import UserError
from pipeline.runtime.files import write_atomic
from pipeline.runtime.log import load_tensorflow

logger = logging.getLogger(__name__)
LITE_TOLERANCE = 1e-4  # largest difference from the Keras model's probabilities we ship


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


def _card_use(card: dict) -> str:
    names = card["input"]["class_names"]
    return f"""# Model card: {card["name"]}

Saved {card["date"]}. A binary image classifier: **{names[0]}** or **{names[1]}**, for
the facial expression of the person in a photo.

## Intended use
Sorting and filtering collections of images by the expression they show (for example,
curating a dataset, or tagging photos for search), where a wrong label costs little and a
person can check the result. `happysad predict IMAGE...` answers with the label and its
probability; `model.keras`, `serving/` (a TensorFlow SavedModel) and `{card["files"]["litert"]}`
(LiteRT) hold the same model.

## Out-of-scope uses
- Judging a real person's emotional state, mental health, mood or wellbeing: a facial
  expression in one picture says neither how someone feels nor anything clinical.
- Decisions about people: hiring, admission, credit, insurance, policing, surveillance
  or monitoring of employees or students.
- Anything beyond its two classes: every input, even one with no face at all, gets one of
  {names[0]!r} or {names[1]!r}.

"""


def _card_data(card: dict) -> str:
    return f"""## Training data and its limits
Images scraped by this pipeline's sources (`scrape.sources` in params.yaml), labelled by
the page or query they came from (not by a person), cleaned of broken files and near
duplicates. Records `{card["data_version"].get("path", "?")}`, DVC md5
`{card["data_version"].get("md5", "?")}`; images per split and class:
{json.dumps(card["data_counts"])}.
With the bundled demo site, the training images are **synthetic cartoon faces**: the model
has then learnt those drawings, and its scores below say the pipeline works, not that it
recognises expressions on real photos. Web-scraped labels are noisy (emoji, cartoons,
text and mislabelled photos are common), sets of a few hundred images are small, and
nobody checked whom the scraped images show: expect errors to differ by age, skin tone,
gender, culture, pose, lighting and image quality.

"""


def _card_evaluation(card: dict) -> str:
    m, names = card["metrics"], card["input"]["class_names"]
    bounds = m.get("intervals", {})
    ci = (f"{bounds['confidence']:.0%} interval ({bounds['resamples']} stratified bootstrap "
          "resamples)") if bounds else "interval (not computed)"
    spans = " | ".join(f"{bounds[k]['low']:.3f}-{bounds[k]['high']:.3f}" if k in bounds else "-"
                       for k in ("accuracy", "precision", "recall", "f1", "roc_auc", "loss"))
    per_class = "\n".join(f"| {name} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} | "
                          f"{c['support']} |" for name, c in m["per_class"].items())
    return f"""## How it was evaluated
On the test split only ({m["images"]} held-out images, never trained or early-stopped on;
the split is by near-duplicate group, so no copy of a test image was trained on). The
label is **{names[1]}** when its probability is at least {card["threshold"]}
(`evaluate.threshold`). With few test images every figure is uncertain: one image moves
accuracy by {1 / max(m["images"], 1):.3f}; the second row gives each figure's {ci}.

| | accuracy | precision | recall | F1 | ROC AUC | loss |
| --- | --- | --- | --- | --- | --- | --- |
| test split | {m["accuracy"]:.3f} | {m["precision"]:.3f} | {m["recall"]:.3f} | {m["f1"]:.3f} | \
{m["roc_auc"]:.3f} | {m["loss"]:.3f} |
| {ci} | {spans} |

| class | precision | recall | F1 | images |
| --- | --- | --- | --- | --- |
{per_class}

{_card_epochs(m)} {m["train_val_gap"]["accuracy"]:+.3f}
(large positive gaps mean overfitting).

""" + _card_by_face(m.get("by_face"))


def _card_epochs(m: dict) -> str:
    """The kept epoch, or each member's, leading to the train-val gap (details.json written
    before train.members has best_epoch only)."""
    epochs = m.get("best_epochs") or [m["best_epoch"]]
    if len(epochs) == 1:
        return f"Best epoch {epochs[0]}; train-val accuracy gap at that epoch"
    return (f"Best epochs {', '.join(map(str, epochs[:-1]))} and {epochs[-1]} (one per network "
            "averaged); the averaged model's train-val accuracy gap")


def _card_by_face(faces: dict | None) -> str:
    """The test figures with and without a face found, and which of them to trust."""
    if not faces:
        return ""

    def row(name: str, part: dict) -> str:
        span = part.get("accuracy_interval")
        accuracy = f"{part['accuracy']:.3f}" if "accuracy" in part else "-"
        bounds = f"{span['low']:.3f}-{span['high']:.3f}" if span else "-"
        return f"| {name} | {part['images']} ({part['share']:.0%}) | {accuracy} | {bounds} |"

    with_face, without = faces["with_face"], faces["without_face"]
    if "accuracy" in with_face and "accuracy" in without:
        better, worse = (("with", "without") if with_face["accuracy"] >= without["accuracy"]
                         else ("without", "with"))
        low, high = (faces[f"{better}_face"].get("accuracy_interval"),
                     faces[f"{worse}_face"].get("accuracy_interval"))
        apart = bool(low and high and low["low"] > high["high"])
        advice = (f"Trust its labels more on images {better} a face found: their intervals "
                  "do not overlap." if apart else
                  f"Its accuracy {better} a face found is higher here, but the intervals "
                  "overlap: this test split cannot tell the two apart.")
        advice += (" `happysad predict --require-face` gives no label where no face is found.")
    else:
        advice = "Every test image fell on one side: there is nothing to compare."
    return f"""## With and without a face
The face detector ({faces.get("detector") or "?"}) on each test image; accuracy with its
interval on each part. {advice}

| test images | count (share) | accuracy | interval |
| --- | --- | --- | --- |
{row("a face found", with_face)}
{row("no face found", without)}

"""


def _card_markdown(card: dict) -> str:
    contract, names = card["input"], card["input"]["class_names"]
    crop = contract.get("crop") or {}
    members = card["params"]["train"].get("members", 1)
    mean = f" (the mean of {members} networks' answers: `train.members`)" if members > 1 else ""
    views = "" if crop.get("kind") != "views" else f"""
Two views (inputs `pixels`, `face`, `face_found`): `pixels` is the whole picture; `face` the
largest face the `{crop["faces"]["detector"]}` detector finds, {crop["face_size"]}x{crop["face_size"]}x3
uint8 ({crop["margin"]} face sides added around it, eyes levelled when the detector gives
them; black when none is found); `face_found` 1.0 or 0.0. `happysad predict` prepares all three.
"""
    return _card_use(card) + _card_data(card) + _card_evaluation(card) + f"""## Input
{contract["image_size"]}x{contract["image_size"]}x3 uint8 RGB pixels (0-255; the model scales
them to [0, 1] itself), each image resized with the `{contract["resize"]}` policy. Output:
the probability of **{names[1]}**{mean}.
{views}
## Params
```yaml
{yaml.safe_dump(card["params"], sort_keys=False).strip()}
```
"""


def random_inputs(model, count: int, seed: int = 0):
    """Random inputs of the model's shapes: uint8 pixels, 0 or 1 for a float flag."""
    import numpy as np

    rng = np.random.default_rng(seed)
    arrays = {}
    for tensor in model.inputs:
        shape = (count, *tensor.shape[1:])
        arrays[tensor.name] = (rng.integers(0, 256, shape, np.uint8) if tensor.dtype == "uint8"
                               else rng.integers(0, 2, shape).astype(np.float32))
    return arrays if len(arrays) > 1 else next(iter(arrays.values()))


def export_lite(model, serving: Path, out: Path, seed: int = 0) -> float:
    """Convert the serving export to LiteRT and check it against the Keras model on random
    inputs; return the largest difference in probability (refused above LITE_TOLERANCE)."""
    import numpy as np
    import tensorflow as tf

    from pipeline.ml.inference import LiteRuntime

    out.write_bytes(tf.lite.TFLiteConverter.from_saved_model(str(serving)).convert())
    inputs = random_inputs(model, 8, seed)
    lite = LiteRuntime(out)(inputs)
    keras_probs = np.asarray(model(inputs, training=False), np.float64)[:, 0]
    difference = float(np.max(np.abs(lite - keras_probs)))
    if not difference <= LITE_TOLERANCE:
        out.unlink()
        raise UserError(f"{out}: the LiteRT export differs from the Keras model by {difference:.2g} "
                        f"(more than {LITE_TOLERANCE}); not shipped")
    return round(difference, 9)


def save(trained: Path, records: Path, metrics_file: Path, params_file: Path, lock_file: Path,
         out: Path) -> dict:
    """Write the shipped model, its serving export and its card under ``out``; return the card."""
    import datetime

    from pipeline.contracts import features
    from pipeline.ml.model import load

    if not trained.exists():
        raise UserError(f"{trained}: not found; run the train stage first (dvc repro train)")
    from pipeline.contracts.metrics import refuse_non_finite  # here: `predict` imports this module

    metrics = json.loads(metrics_file.read_text())
    refuse_non_finite(metrics, metrics_file)  # before anything is written
    meta = features.read_meta(records)
    model = load(trained)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(trained, out / "model.keras")
    # what we ship must reload safely
    load(out / "model.keras")
    shutil.rmtree(out / "serving", ignore_errors=True)
    model.export(str(out / "serving"), format="tf_saved_model", verbose=False)
    lite_difference = export_lite(model, out / "serving", out / LITE_FILE)
    params = load_sections(params_file, seed=int, tfrecords=TfrecordsParams, train=TrainParams,
                           evaluate=EvaluateParams, clean=CleanParams, faces=FacesParams)
    card = {
        "name": "happysad CNN", "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "files": {"keras": "model.keras", "serving": "serving/", "litert": LITE_FILE},
        "litert_max_difference": lite_difference,
        "input": json.loads((trained.parent / "input.json").read_text()),  # written by train
        "threshold": params.evaluate.threshold, "metrics": metrics,
        # what predict and serve-model apply to this model, whatever params.yaml says later:
        # the images it accepts (the clean stage's rules it was trained under), and the face
        # finder that says face_found when the model cuts no faces itself
        "accepts": ImageRules.of(params.clean).model_dump(mode="json"),
        "faces": params.faces.model_dump(mode="json"),
        "data_version": data_version(lock_file, records), "data_counts": meta["counts"],
        "params": {"seed": params.seed, "tfrecords": params.tfrecords.model_dump(),
                   "train": params.train.model_dump()},
    }
    write_atomic(out / "model_card.json", json.dumps(card, indent=2) + "\n")
    write_atomic(out / "model_card.md", _card_markdown(card))
    return card


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trained", type=Path, default=Path("models/train/model.keras"))
    parser.add_argument("--records", type=Path, default=Path("data/tfrecords"))
    parser.add_argument("--metrics", type=Path, default=Path("reports/evaluate/details.json"),
                        help="the evaluate stage's figures (default: %(default)s)")
    parser.add_argument("--lock", type=Path, default=Path("dvc.lock"))
    parser.add_argument("--out", type=Path, default=Path("models"))


def run(args: argparse.Namespace) -> None:
    load_tensorflow()  # its native start-up notices go to the debug log
    card = save(args.trained, args.records, args.metrics, args.params, args.lock, args.out)
    logger.info("save: %s, %s and model_card.md in %s (test accuracy %.3f)", card["files"]["keras"],
                card["files"]["serving"], args.out, card["metrics"]["accuracy"])


if __name__ == "__main__":  # as dvc.yaml runs it: under its own name, for its logger
    sys.exit(main(__spec__.name))
