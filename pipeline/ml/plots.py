"""The PNG plots of training and evaluation (Matplotlib, no display needed)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # figures without pyplot: files only, no window, no global state


def _subplots(*grid: int, figsize: tuple[float, float], **kwargs: object):
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*grid, **kwargs)


def _save(fig: Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})  # no version stamp: same bytes each run


def learning_curves(members_csv: Path, path: Path) -> None:
    """Loss and accuracy per epoch for train and val, with the kept epoch marked; with several
    members (train.members), the others' val curves in grey, each kept epoch a dot."""
    with members_csv.open() as handle:
        rows = list(csv.DictReader(handle))
    members: dict[str, list[dict]] = {}
    for row in rows:
        members.setdefault(row["member"], []).append(row)
    first, *others = members.values()
    kept = next(int(r["epoch"]) for r in first if r["kept"] == "1")
    named = f"member 1 of {len(members)}, " if others else ""
    rest = (f"members 2-{len(members)}: val, a dot on each kept epoch" if len(others) > 1
            else "member 2: val, a dot on its kept epoch")
    fig, axes = _subplots(1, 2, figsize=(10, 4))
    for axis, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for number, own in enumerate(others):
            axis.plot([int(r["epoch"]) for r in own], [float(r[f"val_{metric}"]) for r in own],
                      "-", color="grey", alpha=0.5, lw=1,
                      label=None if number else rest)
            best = next(r for r in own if r["kept"] == "1")
            axis.plot(int(best["epoch"]), float(best[f"val_{metric}"]), "o", color="grey")
        epochs = [int(r["epoch"]) for r in first]
        axis.plot(epochs, [float(r[metric]) for r in first], "o-",
                  label=f"{named}train (augmented)")
        axis.plot(epochs, [float(r[f"val_{metric}"]) for r in first], "o-", label=f"{named}val")
        axis.axvline(kept, color="grey", linestyle="--", label=f"{named}kept: epoch {kept}")
        axis.set(xlabel="epoch", ylabel=metric, title=metric)
        axis.grid(alpha=0.3)
        axis.legend()
    _save(fig, path)


def confusion(matrix: np.ndarray, class_names: list[str], path: Path) -> None:
    fig, axis = _subplots(figsize=(4.5, 4))
    axis.imshow(matrix, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        axis.text(j, i, str(count), ha="center", va="center",
                  color="white" if count > matrix.max() / 2 else "black", fontsize=14)
    axis.set(xticks=range(len(class_names)), yticks=range(len(class_names)),
             xticklabels=class_names, yticklabels=class_names, xlabel="predicted", ylabel="actual",
             title="test confusion matrix")
    _save(fig, path)


def curve(x: np.ndarray, y: np.ndarray, xlabel: str, ylabel: str, title: str, path: Path,
          diagonal: bool = False,
          band: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> None:
    """A curve, with ``band`` (x, low, high) shaded around it when given."""
    fig, axis = _subplots(figsize=(4.5, 4))
    if band is not None:
        axis.fill_between(band[0], band[1], band[2], alpha=0.25, lw=0, label="bootstrap interval")
    axis.plot(x, y, lw=2)
    if diagonal:
        axis.plot([0, 1], [0, 1], "--", color="grey", label="chance")
        axis.legend(loc="lower right")
    axis.set(xlabel=xlabel, ylabel=ylabel, xlim=(0, 1), ylim=(0, 1.02))
    axis.set_title(title, fontsize=9)
    axis.grid(alpha=0.3)
    _save(fig, path)


def mistakes(images: list[np.ndarray], captions: list[str], path: Path) -> None:
    """A grid of the most confident wrong predictions (or a note that there were none)."""
    columns = min(4, max(len(images), 1))
    rows = max(1, -(-len(images) // columns))
    fig, axes = _subplots(rows, columns, figsize=(3 * columns, 3.3 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image, caption in zip(axes.flat, images, captions, strict=False):
        axis.imshow(image)
        axis.set_title(caption, fontsize=9)
    if not images:
        axes[0, 0].text(0.5, 0.5, "no mistakes on the test split", ha="center", va="center")
    _save(fig, path)


def tuning_trials(rows: list[dict], metric: str, best_number: int, path: Path) -> None:
    """Each trial's val score and its train-val accuracy gap (the overfitting signal)."""
    numbers = [r["number"] for r in rows]
    best = next(r for r in rows if r["number"] == best_number)
    fig, axes = _subplots(1, 2, figsize=(10, 4))
    axes[0].plot(numbers, [r["score"] for r in rows], "o", label="trial")
    axes[0].plot([best["number"]], [best["score"]], "*", markersize=16, label="best")
    axes[0].set(xlabel="trial", ylabel=metric, title=f"{metric} per trial (val split)")
    axes[1].bar(numbers, [r["gap_accuracy"] for r in rows],
                color=["tab:orange" if r is best else "tab:blue" for r in rows])
    axes[1].axhline(0, color="grey", linewidth=0.8)
    axes[1].set(xlabel="trial", ylabel="train - val accuracy", title="overfitting gap per trial")
    for axis in axes:
        axis.grid(alpha=0.3)
    axes[0].legend()
    _save(fig, path)


def folds(details: dict, path: Path) -> None:
    """Cross-validation: each metric per fold, its mean +- sd, and the pooled out-of-fold
    figure with its bootstrap interval."""
    names = ("accuracy", "f1", "roc_auc")
    fig, axis = _subplots(figsize=(6.5, 4))
    for x, name in enumerate(names):
        values = [f[name] for f in details["per_fold"]]
        mean, sd = details["mean"][name], details["sd"][name]
        axis.add_patch(_rectangle(x - 0.3, mean - sd, 0.6, 2 * sd))
        axis.plot([x - 0.3, x + 0.3], [mean, mean], color="tab:blue", lw=2,
                  label="mean +- sd over folds" if x == 0 else None)
        axis.plot(np.full(len(values), x - 0.1), values, "o", color="tab:blue", alpha=0.6,
                  label="one fold" if x == 0 else None)
        bound = details["pooled"]["intervals"][name]
        axis.errorbar([x + 0.15], [details["pooled"][name]], fmt="D", color="tab:orange",
                      yerr=[[details["pooled"][name] - bound["low"]],
                            [bound["high"] - details["pooled"][name]]], capsize=4,
                      label=f"pooled, {details['pooled']['intervals']['confidence']:.0%} "
                      "interval" if x == 0 else None)
    axis.set(xticks=range(len(names)), xticklabels=names, ylim=(0, 1.02),
             title=f"{details['folds']}-fold cross-validation, {details['images']} images")
    axis.grid(alpha=0.3, axis="y")
    axis.legend(loc="lower right", fontsize=8)
    _save(fig, path)


def _rectangle(x: float, y: float, width: float, height: float):
    from matplotlib.patches import Rectangle

    return Rectangle((x, y), width, height, color="tab:blue", alpha=0.15, lw=0)
