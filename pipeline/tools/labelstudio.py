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

from pipeline.config.params import load_params
from pipeline.contracts import decisions as decision_log
from pipeline.review.labelstudio import (
    decisions_from_export,
    label_config,
    new_decisions,
    read_export,
    tasks,
)
from pipeline.runtime.errors import UserError
from pipeline.runtime.files import write_atomic

logger = logging.getLogger(__name__)


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
    export = read_export(args.file)
    if not isinstance(export, list):
        raise UserError(f"{args.file}: not a Label Studio JSON export (a list of tasks)")
    made = decisions_from_export(export, classes, args.file)
    fresh = new_decisions(made, args.decisions)
    decision_log.append(args.decisions, fresh)
    again = f"; {len(made) - len(fresh)} were imported before" if len(made) > len(fresh) else ""
    logger.info("labelstudio: %d decisions from %s appended to %s (applied by the next dvc "
                "repro)%s", len(fresh), args.file, args.decisions, again)
