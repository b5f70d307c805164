"""Champion against challenger: ship the new model to production only when it is better.

The challenger is what the save stage wrote (``models/model.keras``, ``serving/``
and the card); its test metrics are ``reports/evaluate/metrics.json``. The
champion is the model in ``models/production/``. It is scored on the same test
images the challenger was scored on (those of its ``predictions.csv``), each prepared from
``data/raw`` through the champion's own input contract (its size, resize and face crop, as
``predict`` prepares an image), so two models with different inputs compare fairly. The challenger
replaces it only if it wins on ``promote.metric`` by more than
``promote.margin``. The first model is always promoted. The decision, both
scores and the reason are written to ``reports/promote/decision.json`` and
appended to ``models/promotions.jsonl``.

Promotion swaps whole folders, so ``models/production/`` is never half written.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import shutil
from pathlib import Path
from typing import Protocol

import numpy as np

from pipeline.config.evaluate import EvaluateParams
from pipeline.config.loader import load_sections
from pipeline.config.promote import PromoteParams
from pipeline.contracts.export import SHIPPED, read_card
from pipeline.contracts.metrics import HEADLINE, LOWER_IS_BETTER, refuse_non_finite
from pipeline.contracts.predictions import read_predictions
from pipeline.ml.inference import load_runtime
from pipeline.ml.scoring import Scores, summary
from pipeline.runtime.errors import UserError
from pipeline.runtime.files import append_lines, write_atomic

logger = logging.getLogger(__name__)


def champion_scores(production: Path, raw: Path, test: dict[str, tuple[int, float]],
                    class_names: list[str], batch_size: int) -> Scores:
    """The production model's probabilities on the ``test`` images (sha256 -> (true class,
    the challenger's probability)), each read from ``raw`` and prepared through the champion's
    own input contract, as ``predict`` would prepare it."""
    from pipeline.contracts.features import face_size
    from pipeline.vision.faces import FaceCrop
    from pipeline.vision.images import model_views, stacked

    contract = read_card(production)["input"]
    if contract["class_names"] != class_names:
        raise _IncomparableError(f"its classes {contract['class_names']} are not the "
                                 f"challenger's {class_names}")
    files = {path.stem: path for path in raw.glob("*/*") if path.stem in test}
    shas = sorted(files)
    if not shas:
        raise _IncomparableError(f"none of the challenger's test images is in {raw}")
    model = load_runtime(production)
    crop = FaceCrop.of(contract.get("crop"))
    probabilities = []
    for first in range(0, len(shas), batch_size):
        views = [model_views(files[sha].read_bytes(), contract["image_size"], contract["resize"],
                             crop=crop, face_size=face_size(contract))
                 for sha in shas[first:first + batch_size]]
        probabilities.append(model(stacked(views)))
    probability = np.concatenate(probabilities)
    if not np.isfinite(probability).all():
        raise _IncomparableError("it gives non-finite probabilities: it is broken")
    return Scores(shas, np.array([test[sha][0] for sha in shas]), probability)


def paired_test(challenger: dict[str, tuple[int, float]], champion: Scores, threshold: float,
                params: PromoteParams, resamples: int, seed: int, interval: float) -> dict | None:
    """The paired bootstrap of challenger minus champion on the images both were scored on
    (None when they share none)."""
    from pipeline.ml.bootstrap import paired_difference

    common = [i for i, sha in enumerate(champion.sha256) if sha in challenger]
    if not common:
        return None
    ours = np.array([challenger[champion.sha256[i]][1] for i in common])
    test = paired_difference(champion.actual[common], ours, champion.probability[common],
                             threshold, params.metric, resamples, interval, seed)
    return {**test, "images": len(common)}  # the test images both models were scored on


class _IncomparableError(Exception):
    """The champion cannot be scored on the challenger's test images (other classes, or the
    images are gone)."""


def decide(challenger: float, champion: float | None, metric: str, margin: float) -> tuple[bool, str]:
    """Whether the challenger wins, and why, in one sentence."""
    if champion is None:
        return True, "no production model yet: the first model is promoted"
    lower = metric in LOWER_IS_BETTER
    gain = (champion - challenger) if lower else (challenger - champion)
    direction = "lower" if lower else "higher"
    if gain > margin:
        return True, (f"challenger {metric} {challenger:.4f} beats champion {champion:.4f} by "
                      f"{gain:+.4f} ({direction} is better; margin {margin})")
    return False, (f"challenger {metric} {challenger:.4f} against champion {champion:.4f}: "
                   f"{gain:+.4f} is not more than the margin {margin} ({direction} is better); "
                   "the champion stays")


def decide_paired(test: dict, params: PromoteParams) -> tuple[bool, str]:
    """Promote when the challenger is better in ``promote.metric`` with probability at least
    ``promote.confidence`` and by more than ``promote.margin``, on the same images."""
    lower = params.metric in LOWER_IS_BETTER
    gain = -test["difference"] if lower else test["difference"]
    odds = (f"{params.metric} difference {test['difference']:+.4f} ({test['confidence']:.0%} interval "
            f"{test['low']:+.4f} to {test['high']:+.4f}; {'lower' if lower else 'higher'} is "
            f"better), challenger better in {test['probability_better']:.0%} of "
            f"{test['resamples']} paired resamples")
    if test["probability_better"] >= params.confidence and gain > params.margin:
        return True, f"challenger beats champion: {odds}"
    return False, (f"{odds}: not beyond promote.confidence {params.confidence:.0%} and margin "
                   f"{params.margin}; the champion stays")


def _swap_in(models: Path, production: Path) -> None:
    staging = production.with_name(production.name + ".incoming")
    retired = production.with_name(production.name + ".retired")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in SHIPPED:
        source = models / name
        if not source.exists():
            raise UserError(f"{source}: not found; run the save stage first (dvc repro save)")
        if source.is_dir():
            shutil.copytree(source, staging / name)
        else:
            shutil.copy2(source, staging / name)
    shutil.rmtree(retired, ignore_errors=True)
    if production.exists():
        production.rename(retired)
    staging.rename(production)
    shutil.rmtree(retired, ignore_errors=True)


def _same_file(a: Path, b: Path) -> bool:
    return b.exists() and a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes()


class Settings(Protocol):
    """The params promotion reads: its own section, evaluate's threshold, batch and intervals,
    and the seed (``load_sections`` of them, or the whole params)."""

    seed: int
    promote: PromoteParams
    evaluate: EvaluateParams


def _against_champion(production: Path, predictions: Path, raw: Path, class_names: list[str],
                      params: Settings) -> tuple[dict | None, dict | None, str]:
    """The champion's figures on the challenger's test images, the paired test, and a note
    when the champion cannot be scored on them."""
    test = read_predictions(predictions)
    try:
        images = champion_scores(production, raw, test, class_names, params.evaluate.batch_size)
    except _IncomparableError as why:
        return None, None, f"the champion cannot be scored on the challenger's test images ({why}); "
    champion = summary(images, class_names, params.evaluate.threshold)
    paired = paired_test(test, images, params.evaluate.threshold, params.promote,
                         params.evaluate.bootstrap_resamples, params.seed, params.evaluate.confidence)
    return champion, paired, ""


def _decision(challenger: dict, champion: dict | None, test: dict | None, note: str,
              same_model: bool, params: PromoteParams) -> tuple[bool, str]:
    """Whether to promote, and why, in one sentence."""
    if same_model:
        return False, ("the new model is the production model itself (the same file): the "
                       "champion stays")
    if note:
        return True, note + "the challenger is promoted"
    if test is not None:
        return decide_paired(test, params)
    champion_score = None if champion is None else float(champion[params.metric])
    return decide(float(challenger[params.metric]), champion_score, params.metric, params.margin)


def promote(models: Path, metrics_file: Path, raw: Path, out: Path, params: Settings,
            run_name: str = "") -> dict:
    """Compare, promote if better, record the decision; return it."""
    rule = params.promote
    if not metrics_file.exists():
        raise UserError(f"{metrics_file}: not found; run the evaluate stage first (dvc repro)")
    challenger = json.loads(metrics_file.read_text())
    refuse_non_finite(challenger, metrics_file)  # a broken model is never promoted
    if rule.metric not in challenger:
        raise UserError(f"{metrics_file} has no `{rule.metric}`; set promote.metric in params.yaml "
                        f"to one of {', '.join(HEADLINE)}")
    production = models / "production"
    champion, test, note = None, None, ""
    same_model = (production / "model.keras").exists() and _same_file(
        production / "model.keras", models / "model.keras")
    if same_model:
        # Nothing upstream changed (a new training run writes a new file): no need to score it.
        champion = challenger
    elif (production / "model.keras").exists():
        class_names = read_card(models)["input"]["class_names"]
        champion, test, note = _against_champion(production, metrics_file.parent / "predictions.csv",
                                                 raw, class_names, params)
    promoted, reason = _decision(challenger, champion, test, note, same_model, rule)
    decision = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "run": run_name, "metric": rule.metric, "margin": rule.margin,
        "confidence": rule.confidence, "paired_test": test,
        "challenger": float(challenger[rule.metric]),
        "champion": None if champion is None else float(champion[rule.metric]),
        "promoted": promoted, "reason": reason,
        "challenger_metrics": {k: challenger[k] for k in HEADLINE},
        "champion_metrics": None if champion is None else {k: champion[k] for k in HEADLINE},
        "test_images": challenger["images"],
    }
    if promoted:
        _swap_in(models, production)
        write_atomic(production / "promotion.json", json.dumps(decision, indent=2) + "\n")
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "decision.json", json.dumps(decision, indent=2) + "\n")
    if not same_model:  # the same file again decides nothing: the history stays as it was
        append_lines(models / "promotions.jsonl", [json.dumps(decision)])
    return decision


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", type=Path, default=Path("models"),
                        help="the save stage's folder; production/ is under it (default: %(default)s)")
    parser.add_argument("--metrics", type=Path, default=Path("reports/evaluate/metrics.json"))
    parser.add_argument("--raw", type=Path, default=Path("data/raw"),
                        help="the images, for scoring the champion (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("reports/promote"))
    parser.add_argument("--run-name", default="", help="recorded with the decision (the flow run)")


def run(args: argparse.Namespace) -> None:
    params = load_sections(args.params, seed=int, promote=PromoteParams, evaluate=EvaluateParams)
    decision = promote(args.models, args.metrics, args.raw, args.out, params, args.run_name)
    logger.info("promote: %s: %s", "PROMOTED" if decision["promoted"] else "kept the champion",
                decision["reason"])
