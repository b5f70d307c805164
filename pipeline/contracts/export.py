"""What ``models/`` ships and how other tools find it: the files of an export (save writes them,
promotion copies them to ``models/production/``, predict runs them) and the lock that names
the data a model was trained on."""

from __future__ import annotations

import json
import math
from pathlib import Path

import yaml

from pipeline.runtime.errors import UserError

LITE_FILE = "model.tflite"  # the LiteRT export `happysad predict` runs, beside model.keras
CARD_FILE = "model_card.json"
PRETRAINED = Path("models/pretrain/model.keras")  # the pretrain stage's face network
FACE_SET = Path("data/pretrain")  # the face set it is fitted on, a folder per class
# An export's files, as save writes them and promotion copies them.
SHIPPED = ("model.keras", "serving", LITE_FILE, "model_card.md", CARD_FILE)


def lock_outputs(lock_file: Path) -> dict[str, list[dict]] | None:
    """Each stage's outputs as ``dvc.lock`` records them (path, md5, ...); None without a lock."""
    try:
        lock = yaml.safe_load(lock_file.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        return None
    return {name: stage.get("outs", []) for name, stage in lock.get("stages", {}).items()}


def read_card(model_dir: Path) -> dict:
    """The model card: class names, threshold and input contract every reader takes."""
    card_path = card_of(model_dir)
    return parse_card(card_path.read_bytes(), card_path)


def card_of(model_dir: Path) -> Path:
    """The card's path, or a one-line ``UserError`` where ``model_dir`` holds no model."""
    card_path = model_dir / CARD_FILE
    if not card_path.exists() or not (model_dir / "model.keras").exists():
        raise UserError(f"{model_dir}: no model.keras and model_card.json; run `make run` (the "
                        "retrain flow promotes a model there), or pass --model-dir models for the "
                        "last one `dvc repro` trained")
    return card_path


def parse_card(data: bytes, card_path: Path) -> dict:
    """A model card's JSON, checked as every reader needs it (predict, serve-model, promotion):
    its input contract complete, two class names, a threshold strictly between 0 and 1."""
    try:
        card = json.loads(data)
        missing = [k for k in ("class_names", "image_size", "resize") if k not in card["input"]]
        if missing:
            raise KeyError(missing[0])
        names = card["input"]["class_names"]
        if not (isinstance(names, list) and len(names) == 2
                and all(isinstance(n, str) and n for n in names)):
            raise ValueError(f"class_names {str(names)[:80]}: not two names")
        threshold = card["threshold"]
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not (
                math.isfinite(threshold) and 0.0 < threshold < 1.0):
            raise ValueError(f"threshold {str(threshold)[:40]}: not a probability between 0 and 1")
    except RecursionError:
        raise UserError(f"{card_path}: not a model card the save stage wrote (nested too deep); "
                        "run `dvc repro save` again") from None
    except (ValueError, KeyError, TypeError) as err:
        why = str(err) if type(err) is ValueError else f"{err!r} is missing or malformed"
        raise UserError(f"{card_path}: not a model card the save stage wrote ({why}); run "
                        "`dvc repro save` again") from None
    return card


def start_model(init_from: str) -> Path | None:
    """The model file ``train.init_from`` names: None for "", the pretrain stage's face
    network for ``pretrain``, else the path itself; a one-line error when it is missing."""
    if not init_from:
        return None
    path = PRETRAINED if init_from == "pretrain" else Path(init_from)
    if not path.is_file():
        what = ("the pretrain stage trained no face network (data/pretrain holds no face set); "
                "put one there and run `dvc repro pretrain`" if init_from == "pretrain"
                else "no such file")
        raise UserError(f"train.init_from: {path}: {what}, or set train.init_from to \"\"")
    return path
