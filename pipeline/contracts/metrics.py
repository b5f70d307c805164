"""The test metrics by name, in one place: evaluate's headline file, crossval, the model card,
promotion, tuning and the Prefect artifacts all take them from here."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from pipeline.runtime.errors import UserError

HEADLINE = ("accuracy", "precision", "recall", "f1", "roc_auc", "loss")
LOWER_IS_BETTER = frozenset({"loss"})  # of these and of train's figures (val_loss in tune)
# train's per-epoch figures of every member (train.members) beside history.csv (the first's):
# columns member, seed, kept (1 on the member's kept epoch), epoch, then history.csv's
MEMBERS_FILE = "members.csv"


def kept_epochs(train_reports: Path) -> list[int]:
    """Each member's kept (best) epoch, in member order, from train's members.csv."""
    with (train_reports / MEMBERS_FILE).open() as handle:
        return [int(r["epoch"]) for r in csv.DictReader(handle) if r["kept"] == "1"]


def refuse_non_finite(metrics: dict, source: Path) -> None:
    """A NaN or infinite headline figure means a broken model: never save or promote one."""
    bad = [k for k in HEADLINE if not math.isfinite(float(metrics.get(k, 0.0)))]
    if bad:
        raise UserError(f"{source}: {', '.join(bad)} is not a finite number; the model is broken "
                        "(did training diverge?); train it again (dvc repro train)")
