"""The pretrain stage on FER-2013: its held-out accuracy and how long it takes.

Unpacks ``../shared/data/fer2013-happysad-trainval.tar`` (FER-2013's happy and sad faces,
``train/`` and ``validation/`` as they are) into ``WORK/data/pretrain`` and runs the stage
with the repository's params (the ``pretrain`` section), as ``dvc repro pretrain`` would:
its own split by perceptual-hash group, early stopping on its val share, and the test share
scored with 95% bootstrap intervals.

Run: ``uv run python -m bench.pretrain [--work DIR]`` (about 20 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from pipeline.config.evaluate import EvaluateParams
from pipeline.config.loader import load_sections
from pipeline.config.pretrain import PretrainParams, ScrapeClasses

REPO = Path(__file__).resolve().parents[1]
FER_TAR = REPO.parent / "shared" / "data" / "fer2013-happysad-trainval.tar"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pretrain", description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="kept; default a temporary folder")
    args = parser.parse_args(argv)
    if not FER_TAR.exists():
        sys.stdout.write(f"bench.pretrain: {FER_TAR} is not here; nothing to measure\n")
        return 0
    from pipeline.runtime.log import load_tensorflow, setup_logging
    from pipeline.stages.pretrain import pretrain

    setup_logging()
    load_tensorflow()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-pretrain-"))
    faces = work / "data" / "pretrain"
    if not faces.exists():
        faces.mkdir(parents=True)
        with tarfile.open(FER_TAR) as tar:
            tar.extractall(faces, filter="data")
    params = load_sections(REPO / "params.yaml", seed=int, pretrain=PretrainParams,
                           scrape=ScrapeClasses, evaluate=EvaluateParams)
    started = time.perf_counter()
    metrics = pretrain(faces, sorted(params.scrape.classes), work / "models" / "pretrain",
                       work / "reports" / "pretrain", params.pretrain, params.evaluate, params.seed)
    took = time.perf_counter() - started
    accuracy, auc = metrics["accuracy_interval"], metrics["roc_auc_interval"]
    sys.stdout.write(
        f"pretrain on FER-2013: {sum(sum(c.values()) for c in metrics['counts'].values())} faces "
        f"{metrics['counts']}, left out {metrics['left_out']}\n"
        f"held-out test share ({metrics['images']} faces): accuracy {metrics['accuracy']:.3f} "
        f"(95% {accuracy['low']:.3f}-{accuracy['high']:.3f}), ROC AUC {metrics['roc_auc']:.3f} "
        f"({auc['low']:.3f}-{auc['high']:.3f}); best epoch {metrics['best_epoch']}; "
        f"{took / 60:.1f} min\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
