"""What a training run reports: each epoch's figures (history.csv, members.csv) and the saved
model's at its best epoch, measured in inference mode (metrics.json)."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.contracts.metrics import MEMBERS_FILE
from pipeline.runtime.files import write_atomic

EPOCH_METRICS = ("loss", "accuracy", "precision", "recall", "auc_approx")  # Keras', per epoch
REPORTED = ("loss", "accuracy", "precision", "recall", "auc")  # at the best epoch; auc exact


@dataclass(frozen=True)
class TrainReport:
    best_epoch: int  # 1-based
    epochs_run: int
    train: dict[str, float]
    val: dict[str, float]
    gap: dict[str, float]
    images_per_second: float
    device: str


def figures(model, batches: dict[str, object]) -> dict[str, dict]:
    """Figures of the best model in inference mode (no augmentation or dropout) on each of
    ``batches`` (split name -> its batches), so the train-val gap measures overfitting rather
    than the cost of regularisation; AUC exact."""
    import numpy as np

    from pipeline.ml.curves import roc_auc

    found = {}
    for name, data in batches.items():
        scores = model.evaluate(data, return_dict=True, verbose=0)
        pairs = [(y.numpy().ravel(), np.asarray(model.predict_on_batch(x)).ravel())
                 for x, y in data]  # one pass: labels and scores in the same order
        scores["auc"] = roc_auc(np.concatenate([y for y, _ in pairs]),
                                np.concatenate([p for _, p in pairs]))
        found[name] = {m: round(float(scores[m]), 6) for m in REPORTED}
    return found


def gap(found: dict[str, dict]) -> dict[str, float]:
    """How far train's figures are ahead of val's: the sign of overfitting."""
    train, val = found["train"], found["val"]
    return {"accuracy": round(train["accuracy"] - val["accuracy"], 6),
            "loss": round(val["loss"] - train["loss"], 6),
            "auc": round(train["auc"] - val["auc"], 6)}


def write_history(rows: list[dict], path: Path, lead: tuple[str, ...] = ()) -> None:
    """Per epoch figures as CSV; ``lead`` names whole-number columns put first."""
    whole = (*lead, "epoch")
    columns = [*whole, *[m for m in EPOCH_METRICS if m in rows[0]],
               *[f"val_{m}" for m in EPOCH_METRICS if f"val_{m}" in rows[0]],
               *(["val_loss_smoothed"] if "val_loss_smoothed" in rows[0] else []), "learning_rate"]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: (r[k] if k in whole else round(r[k], 6)) for k in columns} for r in rows)


def write_reports(report: TrainReport, members: list, reports_dir: Path) -> None:
    """history.csv: the first member's epochs (what `dvc plots` draws); members.csv: every
    member's, with its seed and its kept (best) epoch marked, for the learning curves plot;
    metrics.json: the saved model's figures."""
    reports_dir.mkdir(parents=True, exist_ok=True)
    write_history(members[0].rows, reports_dir / "history.csv")
    write_history([{"member": number, "seed": member.seed,
                    "kept": int(row["epoch"] == member.best_epoch), **row}
                   for number, member in enumerate(members, start=1) for row in member.rows],
                  reports_dir / MEMBERS_FILE, lead=("member", "seed", "kept"))
    metrics = {k: v for k, v in asdict(report).items() if k not in ("images_per_second", "device")}
    write_atomic(reports_dir / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True) + "\n")
