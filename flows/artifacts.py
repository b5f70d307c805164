"""What each stage shows in the Prefect UI: tables, images and the data version behind a run.

Each builder reads the files the stage wrote (the same ones DVC tracks) and
returns artifacts to publish; nothing here recomputes a figure. A stage that
DVC skipped still has its files, so every run shows the full set.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.contracts.export import lock_outputs
from pipeline.contracts.metrics import HEADLINE


@dataclass(frozen=True)
class Artifact:
    key: str  # lowercase letters, digits and dashes: the UI's Artifacts page groups runs by it
    description: str
    table: list[dict] | None = None
    markdown: str | None = None


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


# Prefect refuses to publish an event over 1.5 MB (PREFECT_EVENTS_MAXIMUM_SIZE_BYTES), and an
# artifact's markdown travels in one: a plot inlined larger than this is sent as a smaller JPEG
# (the PNG on disk is untouched; the mistakes grid of photos was 1.2 MB, 1.6 MB as base64).
INLINE_MAX_BYTES = 400_000


def image_markdown(path: Path, title: str, max_bytes: int = INLINE_MAX_BYTES) -> str:
    """A PNG inlined as a data URI, so the UI shows it without serving any file; over
    ``max_bytes``, a JPEG of it, scaled down until it fits."""
    data, kind = path.read_bytes(), "png"
    if len(data) > max_bytes:
        data, kind = _smaller_jpeg(path, max_bytes), "jpeg"
    text = base64.b64encode(data).decode("ascii")
    return f"### {title}\n\n![{title}](data:image/{kind};base64,{text})\n"


def _smaller_jpeg(path: Path, max_bytes: int) -> bytes:
    import io

    from PIL import Image

    with Image.open(path) as opened:
        image = opened.convert("RGB")
    while True:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=85)
        if buffer.tell() <= max_bytes or min(image.size) < 64:
            return buffer.getvalue()
        image = image.resize((image.width * 3 // 4, image.height * 3 // 4), Image.LANCZOS)


def scrape_artifacts(project: Path) -> list[Artifact]:
    metrics = _read(project / "reports" / "scrape" / "report.json")
    if metrics is None:
        return []
    rows = [{"figure": k, "value": v} for k, v in metrics.items() if not isinstance(v, dict | list)]
    rows += [{"figure": f"data/raw records from {source}", "value": count}
             for source, count in metrics.get("raw_records_by_source", {}).items()]
    return [Artifact("scrape-report", "What the crawl fetched, stored and skipped", table=rows)]


def clean_artifacts(project: Path) -> list[Artifact]:
    report = _read(project / "data" / "clean" / "report.json")
    if report is None:
        return []
    classes = sorted(report["kept"])
    reasons = sorted(report["rejected"])
    rows = [{"images": "kept", **{c: report["kept"][c] for c in classes}}]
    rows += [{"images": f"rejected: {reason}",
              **{c: report["rejected_by_class"].get(c, {}).get(reason, 0) for c in classes}}
             for reason in reasons]
    # A table artifact's first column is its row labels: a named column, or the UI drops it.
    rows.append({"images": "near-duplicate groups (all classes)",
                 classes[0]: report["near_duplicate_groups"]})
    rows.append({"images": "label conflicts (all classes)", classes[0]: report["label_conflicts"]})
    reviewed = report.get("review", {})
    for key, text in (("kept_unreviewed", "kept, nobody has reviewed yet"),
                      ("kept_reviewed", "kept, reviewed"), ("relabelled", "relabelled in review"),
                      ("excluded", "excluded in review")):
        if key in reviewed:
            rows.append({"images": f"{text} (all classes)", classes[0]: reviewed[key]})
    return [Artifact("clean-report", "Images kept and rejected by reason, per class", table=rows)]


def split_artifacts(project: Path) -> list[Artifact]:
    report = _read(project / "data" / "split" / "report.json")
    if report is None:
        return []
    rows = [{"split": split, **counts, "total": sum(counts.values())}
            for split, counts in report["counts"].items()]
    return [Artifact("split-sizes", "Images per split and class", table=rows)]


def data_version_artifacts(project: Path) -> list[Artifact]:
    rows = [{"stage": stage, "output": out["path"], "md5": out.get("md5", "")}
            for stage, outs in (lock_outputs(project / "dvc.lock") or {}).items() for out in outs]
    return [Artifact("data-version", "dvc.lock hashes of every output behind this model",
                     table=rows)] if rows else []


def evaluate_artifacts(project: Path) -> list[Artifact]:
    metrics = _read(project / "reports" / "evaluate" / "details.json")
    if metrics is None:
        return []
    keys = (*HEADLINE, "images", "best_epoch")
    bounds = metrics.get("intervals", {})
    label = f"{bounds.get('confidence', 0.95):.0%} interval"
    rows = [{"metric": k, "test split": metrics[k],
             label: f"{bounds[k]['low']:.3f} - {bounds[k]['high']:.3f}" if k in bounds else ""}
            for k in keys if k in metrics]
    gap = metrics.get("train_val_gap", {})
    rows += [{"metric": f"train-val gap: {k}", "test split": v, label: ""} for k, v in gap.items()]
    out = [Artifact("test-metrics", "Held-out test metrics of the new model", table=rows)]
    plots = project / "reports" / "evaluate" / "plots"
    for name, key, title in (("learning_curves.png", "learning-curves", "Training curves"),
                             ("confusion.png", "confusion-matrix", "Confusion matrix (test split)"),
                             ("roc.png", "roc-curve", "ROC curve (test split)"),
                             ("mistakes.png", "worst-mistakes", "Most confident mistakes")):
        if (plots / name).exists():
            out.append(Artifact(key, title, markdown=image_markdown(plots / name, title)))
    return out


def crossval_artifacts(project: Path) -> list[Artifact]:
    details = _read(project / "reports" / "crossval" / "details.json")
    if details is None or not details.get("folds"):
        return []
    pooled, bounds = details["pooled"], details["pooled"]["intervals"]
    label = f"pooled: {bounds['confidence']:.0%} interval"
    rows = [{"metric": k, "mean over folds": details["mean"][k], "sd": details["sd"][k],
             "pooled out-of-fold": pooled[k],
             label: f"{bounds[k]['low']:.3f} - {bounds[k]['high']:.3f}"} for k in HEADLINE]
    rows += [{"metric": f"fold {f['fold']}: accuracy", "mean over folds": f["accuracy"],
              "sd": "", "pooled out-of-fold": f"best epoch {f['best_epoch']}", label: ""}
             for f in details["per_fold"]]
    out = [Artifact("crossval-metrics", f"{details['folds']}-fold grouped cross-validation on "
                    f"{details['images']} train and val images", table=rows)]
    picture = project / "reports" / "crossval" / "plots" / "folds.png"
    if picture.exists():
        out.append(Artifact("crossval-folds", "Cross-validation per fold",
                            markdown=image_markdown(picture, "Cross-validation per fold")))
    return out


def suspects_artifacts(project: Path) -> list[Artifact]:
    report = _read(project / "reports" / "suspects" / "report.json")
    if report is None:
        return []
    rows = [{"flag": flag, **counts, "all classes": sum(counts.values())}
            for flag, counts in report["flags"].items()]
    rows.append({"flag": "flagged at all (all classes)", "all classes": report["flagged"]})
    return [Artifact("suspects", f"Kept images flagged for review, of {report['images']} "
                     "(happysad review shows them, most suspect first)", table=rows)]


def promotion_artifacts(decision: dict) -> list[Artifact]:
    verdict = "**Promoted** to `models/production/`" if decision["promoted"] else "**Not promoted**"
    champion = decision["champion_metrics"] or {}
    rows = "\n".join(f"| {k} | {v:.4f} | {champion[k]:.4f} |" if k in champion else f"| {k} | {v:.4f} | - |"
                     for k, v in decision["challenger_metrics"].items())
    test = decision.get("paired_test")
    paired = (f"Paired test on the same {decision['test_images']} images: difference "
              f"{test['difference']:+.4f}, {test['confidence']:.0%} interval {test['low']:+.4f} to "
              f"{test['high']:+.4f}; challenger better with probability "
              f"{test['probability_better']:.2f} (promotes at {decision['confidence']}).\n\n"
              if test else "")
    text = (f"## {verdict}\n\n{decision['reason']}.\n\nDeciding metric: `{decision['metric']}`, "
            f"margin {decision['margin']}, on {decision['test_images']} test images.\n\n{paired}"
            f"| metric | challenger (this run) | champion (production) |\n| --- | --- | --- |\n{rows}\n")
    return [Artifact("promotion", "Champion against challenger: the decision and both scores",
                     markdown=text)]


BY_STAGE: dict[str, Callable[[Path], list[Artifact]]] = {
    "scrape": scrape_artifacts,
    "clean": clean_artifacts,
    "split": split_artifacts,
    "tfrecords": data_version_artifacts,
    "crossval": crossval_artifacts,
    "suspects": suspects_artifacts,
    "evaluate": evaluate_artifacts,
}


def publish(artifacts: list[Artifact]) -> None:
    """Send artifacts to the Prefect API of the current run."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    for artifact in artifacts:
        if artifact.table is not None:
            create_table_artifact(artifact.table, key=artifact.key, description=artifact.description)
        else:
            create_markdown_artifact(artifact.markdown or "", key=artifact.key,
                                     description=artifact.description)
