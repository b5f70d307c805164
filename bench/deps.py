"""Which stages an edit makes stale: before and after the stage deps were narrowed.

``uv run python -m bench.deps [--before REV]`` reads ``dvc.yaml`` as it is now and as it was at
git revision REV (default: the last commit with the flat ``pipeline/`` folder), and prints, for
each kind of edit a user makes, the stages whose ``deps`` list the edited file: what the next
``dvc repro`` reruns (a stage downstream of them reruns too only if their outputs change).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
FLAT_LAYOUT = "8810a60"  # the last commit before pipeline/ became subpackages
# An edit a user makes -> the file it touches before and after.
EDITS = [
    ("a --help line of the CLI", "pipeline/cli.py", "pipeline/cli.py"),
    ("the review page", "pipeline/review_page.html", "pipeline/review/page.html"),
    ("the review server", "pipeline/review.py", "pipeline/review/server.py"),
    ("Label Studio interop", "pipeline/labelstudio.py", "pipeline/review/labelstudio.py"),
    ("the flow's cron validator", "pipeline/params.py", "pipeline/config/flow.py"),
    ("the tune section's schema", "pipeline/params.py", "pipeline/config/tune.py"),
    ("the train section's schema", "pipeline/params.py", "pipeline/config/train.py"),
    ("the clean section's schema", "pipeline/params.py", "pipeline/config/clean.py"),
    ("predict", "pipeline/predict.py", "pipeline/tools/predict.py"),
    ("promotion", "pipeline/promote.py", "pipeline/tools/promote.py"),
    ("the bootstrap intervals", "pipeline/bootstrap.py", "pipeline/ml/bootstrap.py"),
    ("the training loop", "pipeline/train.py", "pipeline/ml/fit.py"),
    ("the evaluate stage", "pipeline/evaluate.py", "pipeline/stages/evaluate.py"),
    ("the face detector", "pipeline/faces.py", "pipeline/vision/faces.py"),
    ("the crawl's config", "pipeline/scrape_config.py", "pipeline/scrape/crawl_config.py"),
    ("logging set-up", "pipeline/log.py", "pipeline/runtime/log.py"),
]


def stale(dvc_yaml: str, path: str) -> list[str]:
    """The stages of ``dvc_yaml`` (text) that list ``path`` among their deps."""
    stages = yaml.safe_load(dvc_yaml)["stages"]
    return [name for name, stage in stages.items() if path in stage.get("deps", [])]


def table(before: str, after: str) -> list[tuple[str, str, str]]:
    def show(names: list[str]) -> str:
        return ", ".join(names) if names else "none"

    return [(what, show(stale(before, old)), show(stale(after, new))) for what, old, new in EDITS]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.deps", description=__doc__.splitlines()[0])
    parser.add_argument("--before", default=FLAT_LAYOUT, help="git revision (default %(default)s)")
    args = parser.parse_args(argv)
    before = subprocess.run(["git", "show", f"{args.before}:dvc.yaml"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout
    rows = table(before, (REPO / "dvc.yaml").read_text())
    width = max(len(r[0]) for r in rows)
    sys.stdout.write(f"{'edited':{width}}  stale before ({args.before})  |  stale now\n")
    for what, old, new in rows:
        sys.stdout.write(f"{what:{width}}  {old}  |  {new}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
