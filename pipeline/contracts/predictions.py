"""The per-image probabilities stages hand each other, each file with its one writer and reader:
evaluate's ``predictions.csv`` (the test images) and crossval's ``oof.csv`` (the out-of-fold
probability of every train and val image); suspects reads both."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

OOF_HEADER = ["sha256", "label", "probability", "fold"]


def write_predictions(path: Path, names: list[str],
                      rows: Iterable[tuple[str, int, int, float]]) -> None:
    """``predictions.csv``: per test image its sha256, true and predicted class (by name) and
    the probability of class 1, in a ``p_<class 1>`` column."""
    write_csv(path, ["sha256", "actual", "predicted", f"p_{names[1]}"],
              ((sha, names[actual], names[predicted], f"{probability:.6f}")
               for sha, actual, predicted, probability in rows))


def write_csv(path: Path, header: list[str], rows) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def read_predictions(path: Path) -> dict[str, tuple[int, float]]:
    """``predictions.csv`` as write_predictions writes it: sha256 -> (true class index, probability
    of class 1); the header's ``p_<class>`` column names class 1."""
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    positive = rows[0][3].removeprefix("p_")
    return {r[0]: (int(r[1] == positive), float(r[3])) for r in rows[1:]}


def write_oof(path: Path, results: list[dict], class_names: list[str]) -> None:
    rows = sorted((sha, class_names[actual], f"{prob:.6f}", number)
                  for number, r in enumerate(results, start=1)
                  for sha, actual, prob in zip(r["sha256"], r["actual"], r["probability"],
                                               strict=True))
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(OOF_HEADER)
        writer.writerows(rows)


def read_oof(path: Path) -> list[dict[str, str]]:
    """``oof.csv`` as write_oof writes it: one dict per image, keys ``OOF_HEADER``."""
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))
