"""`dvc repro` really runs the whole DAG, caches it, and shows readable metrics and plots.

(That each stage lists exactly what it imports is tests/unit/test_layers.py's.)"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from testing.project import TINY_SITE, copy_project, tiny_params, tool_env


def test_dvc_repro_runs_the_dag_then_is_a_no_op(tmp_path: Path) -> None:
    params = yaml.safe_load(tiny_params(TINY_SITE))
    params["crossval"]["folds"] = 2  # the stage's real path, through DVC (off by default)
    project = copy_project(tmp_path / "project", yaml.safe_dump(params, sort_keys=False))
    env = tool_env()

    def repro() -> str:
        result = subprocess.run(["dvc", "repro"], cwd=project, env=env, capture_output=True,
                                text=True, timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    first = repro()
    for stage in yaml.safe_load((project / "dvc.yaml").read_text())["stages"]:
        assert f"Running stage '{stage}'" in first
    manifest = project / "data" / "raw" / "manifest.jsonl"
    assert len(manifest.read_text().splitlines()) > 2 * TINY_SITE.images_per_class
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    card = json.loads((project / "models" / "model_card.json").read_text())
    records = next(o for o in lock["stages"]["tfrecords"]["outs"] if o["path"] == "data/tfrecords")
    assert card["data_version"]["md5"] == records["md5"]  # the card names the data it was trained on
    metrics = json.loads((project / "reports" / "evaluate" / "metrics.json").read_text())
    assert metrics["images"] == card["metrics"]["images"] > 0
    assert (project / "models" / "serving" / "saved_model.pb").exists()
    split = [json.loads(line) for line in (project / "data" / "split" / "split.jsonl").open()]
    oof = (project / "reports" / "crossval" / "oof.csv").read_text().splitlines()
    assert oof[0] == "sha256,label,probability,fold"
    assert sorted(row.split(",")[0] for row in oof[1:]) == sorted(
        r["sha256"] for r in split if r["split"] != "test")
    assert not any((project / "models" / ".crossval").iterdir())  # finished: nothing kept
    second = repro()
    assert "Running stage" not in second and "didn't change, skipping" in second
    _check_dvc_views(project, env)
    lock = (project / "dvc.lock").read_text()
    # Forcing the data stages after the crawl (the model's .keras zip carries a save time; the
    # crawl's own reproducibility is test_scrape's) changes nothing.
    forced = subprocess.run(["dvc", "repro", "-f", "-s", "clean", "split", "tfrecords"], cwd=project,
                            env=env, capture_output=True, text=True, timeout=600)
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert (project / "dvc.lock").read_text() == lock  # bit-identical outputs


def _check_dvc_views(project: Path, env: dict[str, str]) -> None:
    """`dvc metrics show` is a readable table of headline numbers; `dvc plots show` draws each
    plot once and nothing that dvc.yaml's plots section does not name."""
    shown = subprocess.run(["dvc", "metrics", "show"], cwd=project, env=env, capture_output=True,
                           text=True, check=True).stdout
    assert max(len(line) for line in shown.splitlines()) <= 160, shown
    header = shown.splitlines()[0].split()
    assert {"accuracy", "precision", "recall", "f1", "roc_auc", "loss", "train_val_gap", "kept",
            "rejected"} <= set(header) and len(header) <= 12
    plots = json.loads(subprocess.run(["dvc", "plots", "show", "--json"], cwd=project, env=env,
                                      capture_output=True, text=True, check=True).stdout)
    names = list(plots["data"])
    assert len(names) == len(set(names))
    pictures = [n for n in names if n.endswith(".png")]
    assert sorted(Path(n).name for n in pictures) == sorted(
        p.name for p in (project / "reports" / "evaluate" / "plots").glob("*.png"))
    drawn = [n for n in names if not n.endswith(".png")]
    defined = [next(iter(d)) for d in yaml.safe_load((project / "dvc.yaml").read_text())["plots"]
               if isinstance(d, dict)]
    assert sorted(drawn) == sorted(defined)  # no default plot of a stage-level file
