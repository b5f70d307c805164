"""Label Studio and the review decisions: suspects as tasks (with the model's guess as a
pre-annotation) and its labelling config out; an export's annotations as decisions in, each
task checked before anything is appended, and each imported once (``happysad labelstudio``,
``pipeline/tools/labelstudio.py``, is the command).
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from xml.sax.saxutils import quoteattr

from pipeline.contracts import decisions as decision_log
from pipeline.runtime.errors import UserError

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


def read_export(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: not found") from None
    except ValueError as err:
        raise UserError(f"{path}: not JSON ({err}); export JSON from Label Studio") from None
    except RecursionError:
        raise UserError(f"{path}: JSON nested too deeply to be a Label Studio export; export "
                        "JSON from Label Studio") from None
