"""happysad labelstudio: hand suspects to Label Studio as tasks, and its export back as review decisions.

``happysad labelstudio export tasks.json [--top N]`` writes the most suspect kept
images as Label Studio tasks (``data.image`` a local-files URL, the model's
out-of-sample guess as a pre-annotation) and ``tasks.xml``, the labelling config
to paste into the project (one choice per class, plus ``exclude``). Serve the
images with ``LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true`` and
``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT`` set to this repository.

``happysad labelstudio import export.json`` reads a Label Studio JSON export and
appends one decision per annotated task to ``data/review/decisions.jsonl``: its
latest annotation that was not cancelled; the image's own class is ``keep``, the
other class ``relabel``, ``exclude`` is ``exclude``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from xml.sax.saxutils import quoteattr

from pipeline import decisions as review
from pipeline.errors import UserError

logger = logging.getLogger(__name__)
EXCLUDE = "exclude"
FROM, TO = "choice", "image"


def label_config(classes: list[str]) -> str:
    choices = "".join(f"<Choice value={quoteattr(c)}/>" for c in [*classes, EXCLUDE])
    return (f'<View><Image name="{TO}" value="$image"/><Text name="info" value="$suspicion"/>'
            f'<Choices name="{FROM}" toName="{TO}" choice="single">{choices}</Choices></View>\n')


def tasks(suspects: list[dict], classes: list[str], top: int, image_root: str) -> list[dict]:
    """The ``top`` most suspect images as tasks, each with the model's guess pre-annotated."""
    out = []
    for row in suspects[:top]:
        p_own = row.get("probability_of_class")
        task = {"data": {"image": image_root + row["file"], "sha256": row["sha256"],
                         "class": row["class"], "suspicion": f"{row['class']}; flags: "
                         f"{', '.join(row['flags']) or 'none'}; score {row['score']:.2f}"}}
        if p_own is not None:
            other = next(c for c in classes if c != row["class"])
            guess, score = (row["class"], p_own) if p_own >= 0.5 else (other, 1 - p_own)
            task["predictions"] = [{"model_version": "happysad-out-of-sample", "score": round(score, 4),
                                    "result": [{"from_name": FROM, "to_name": TO, "type": "choices",
                                                "value": {"choices": [guess]}}]}]
        out.append(task)
    return out


def _choice(task: dict) -> tuple[str, str] | None:
    """The latest annotation's choice, and its time; None when nobody answered."""
    answered = [a for a in task.get("annotations", []) if not a.get("was_cancelled")]
    answered.sort(key=lambda a: str(a.get("updated_at") or a.get("created_at") or ""))
    for annotation in reversed(answered):
        for result in annotation.get("result", []):
            choices = result.get("value", {}).get("choices", [])
            if result.get("from_name") == FROM and choices:
                return choices[0], str(annotation.get("updated_at") or review.now())
    return None


def decisions_from_export(export: list[dict], classes: list[str], where: Path) -> list[review.Decision]:
    out = []
    for number, task in enumerate(export, start=1):
        data = task.get("data", {}) if isinstance(task, dict) else {}
        answer = _choice(task) if isinstance(task, dict) else None
        if answer is None:
            continue
        choice, when = answer
        if "sha256" not in data or "class" not in data or choice not in [*classes, EXCLUDE]:
            raise UserError(f"{where}: task {number} is not one this pipeline exported (data.sha256, "
                            f"data.class, a choice of {[*classes, EXCLUDE]}); export with "
                            "happysad labelstudio export")
        action = EXCLUDE if choice == EXCLUDE else "keep" if choice == data["class"] else "relabel"
        out.append(review.Decision(data["sha256"], action, data["class"] if action != "relabel"
                                   else choice, when, "label studio"))
    return out


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: not found") from None
    except ValueError as err:
        raise UserError(f"{path}: not JSON ({err}); export JSON from Label Studio") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("direction", choices=("export", "import"))
    parser.add_argument("file", type=Path, help="tasks to write (export) or a Label Studio export")
    parser.add_argument("--top", type=int, default=500, help="export: the most suspect N images")
    parser.add_argument("--image-root", default="/data/local-files/?d=data/raw/",
                        help="export: URL prefix of data/raw's files in Label Studio")
    parser.add_argument("--suspects", type=Path, default=Path("reports/suspects/suspects.jsonl"))
    parser.add_argument("--decisions", type=Path, default=review.DEFAULT_PATH)


def run(args: argparse.Namespace) -> None:
    if not args.suspects.exists():
        raise UserError(f"{args.suspects}: not found; run the suspects stage (dvc repro suspects)")
    suspects = [json.loads(line) for line in args.suspects.read_text().splitlines() if line]
    classes = sorted({r["class"] for r in suspects})
    if args.direction == "export":
        made = tasks(suspects, classes, args.top, args.image_root)
        args.file.write_text(json.dumps(made, indent=1) + "\n")
        args.file.with_suffix(".xml").write_text(label_config(classes))
        logger.info("labelstudio: %d tasks in %s, labelling config in %s", len(made), args.file,
                    args.file.with_suffix(".xml"))
        return
    export = _read_json(args.file)
    if not isinstance(export, list):
        raise UserError(f"{args.file}: not a Label Studio JSON export (a list of tasks)")
    made = decisions_from_export(export, classes, args.file)
    review.append(args.decisions, made)
    logger.info("labelstudio: %d decisions from %s appended to %s (applied by the next dvc repro)",
                len(made), args.file, args.decisions)
