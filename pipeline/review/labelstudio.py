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
from dataclasses import replace
from pathlib import Path
from xml.sax.saxutils import quoteattr

from pipeline.config.params import load_params
from pipeline.contracts import decisions as decision_log
from pipeline.runtime.errors import UserError
from pipeline.runtime.files import write_atomic

logger = logging.getLogger(__name__)
EXCLUDE = "exclude"
FROM, TO = "choice", "image"
NOTE = "label studio"  # the note of every decision imported, then the annotation's id


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


def _choice(task: dict, where: str) -> tuple[str, str, str] | None:
    """The latest answered annotation's choice, time and id; None when nobody answered."""
    annotations = task.get("annotations")
    if annotations is None:
        annotations = []
    if not isinstance(annotations, list) or not all(isinstance(a, dict) for a in annotations):
        raise UserError(f"{where}: annotations is not a list of annotations; export JSON from "
                        "Label Studio (not JSON-MIN or CSV)")
    answered = [a for a in annotations if not a.get("was_cancelled")]
    answered.sort(key=lambda a: str(a.get("updated_at") or a.get("created_at") or ""))
    for annotation in reversed(answered):
        results = annotation.get("result")
        for result in results if isinstance(results, list) else []:
            if not isinstance(result, dict):  # e.g. ["sad"]: not a Label Studio result
                continue
            value = result.get("value")
            choices = value.get("choices") if isinstance(value, dict) else None
            if result.get("from_name") == FROM and isinstance(choices, list) and choices:
                when = annotation.get("updated_at") or annotation.get("created_at") or ""
                return str(choices[0]), str(when), str(annotation.get("id", ""))
    return None


def _looks_json_min(export: list) -> bool:
    """Label Studio's JSON-MIN export: one flat object per task, its data keys and the choice
    at the top level, no ``annotations``."""
    return bool(export) and all(isinstance(t, dict) and "annotations" not in t and "data" not in t
                                for t in export)


def decisions_from_export(export: list, classes: list[str], where: Path) -> list[decision_log.Decision]:
    """One decision per answered task, every task checked before any is returned (so a bad
    export appends nothing). The note names the annotation, so a second import of the same
    export is recognised."""
    if _looks_json_min(export):
        raise UserError(f"{where}: a JSON-MIN export, which leaves out the annotations' ids and "
                        "times; export as JSON in Label Studio and import that")
    out = []
    for number, task in enumerate(export, start=1):
        at = f"{where}: task {number}"
        if not isinstance(task, dict):
            raise UserError(f"{at}: not a task object; export JSON from Label Studio")
        answer = _choice(task, at)
        if answer is None:
            continue
        choice, when, annotation = answer
        data = task.get("data")
        if (not isinstance(data, dict) or not decision_log.is_sha256(str(data.get("sha256", "")))
                or data.get("class") not in classes or choice not in [*classes, EXCLUDE]):
            raise UserError(f"{at} is not one this pipeline exported (data.sha256, data.class "
                            f"one of {classes}, a choice of {[*classes, EXCLUDE]}); export the "
                            "tasks with happysad labelstudio export; nothing was appended")
        action = EXCLUDE if choice == EXCLUDE else "keep" if choice == data["class"] else "relabel"
        out.append(decision_log.Decision(data["sha256"], action, data["class"] if action != "relabel"
                                   else choice, when, f"{NOTE} annotation {annotation}".rstrip()))
    return out


def new_decisions(made: list[decision_log.Decision], path: Path) -> list[decision_log.Decision]:
    """``made`` less the decisions ``path`` already holds from an earlier import of the same
    export (same image, annotation and answer, at the same time where the export gives one),
    the rest timed now where the export gave no time."""
    def key(d: decision_log.Decision) -> tuple[str, ...]:
        return d.sha256, d.note, d.action, d.label, d.time

    had = set()
    for decision in decision_log.read(path):
        if decision.note.startswith(NOTE):  # kept under its time, and as if it had none
            had |= {key(decision), key(replace(decision, time=""))}
    return [d if d.time else replace(d, time=decision_log.now()) for d in made if key(d) not in had]


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: not found") from None
    except ValueError as err:
        raise UserError(f"{path}: not JSON ({err}); export JSON from Label Studio") from None
    except RecursionError:
        raise UserError(f"{path}: JSON nested too deeply to be a Label Studio export; export "
                        "JSON from Label Studio") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("direction", choices=("export", "import"))
    parser.add_argument("file", type=Path, help="tasks to write (export) or a Label Studio export")
    parser.add_argument("--top", type=int, default=500, help="export: the most suspect N images")
    parser.add_argument("--image-root", default="/data/local-files/?d=data/raw/",
                        help="export: URL prefix of data/raw's files in Label Studio")
    parser.add_argument("--suspects", type=Path, default=Path("reports/suspects/suspects.jsonl"))
    parser.add_argument("--decisions", type=Path, default=decision_log.DEFAULT_PATH)


def run(args: argparse.Namespace) -> None:
    if not args.suspects.exists():
        raise UserError(f"{args.suspects}: not found; run the suspects stage (dvc repro suspects)")
    suspects = [json.loads(line) for line in args.suspects.read_text().splitlines() if line]
    classes = list(load_params(args.params).scrape.classes)  # not the suspects': one may be absent
    if args.direction == "export":
        made = tasks(suspects, classes, args.top, args.image_root)
        write_atomic(args.file, json.dumps(made, indent=1) + "\n")
        write_atomic(args.file.with_suffix(".xml"), label_config(classes))
        logger.info("labelstudio: %d tasks in %s, labelling config in %s", len(made), args.file,
                    args.file.with_suffix(".xml"))
        return
    export = _read_json(args.file)
    if not isinstance(export, list):
        raise UserError(f"{args.file}: not a Label Studio JSON export (a list of tasks)")
    made = decisions_from_export(export, classes, args.file)
    fresh = new_decisions(made, args.decisions)
    decision_log.append(args.decisions, fresh)
    again = f"; {len(made) - len(fresh)} were imported before" if len(made) > len(fresh) else ""
    logger.info("labelstudio: %d decisions from %s appended to %s (applied by the next dvc "
                "repro)%s", len(fresh), args.file, args.decisions, again)
