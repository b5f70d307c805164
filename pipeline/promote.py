"""Champion against challenger: ship the new model to production only when it is better.

The challenger is what the save stage wrote (``models/model.keras``, ``serving/``
and the card); its test metrics are ``reports/evaluate/metrics.json``. The
champion is the model in ``models/production/``. It is scored on the same test
records the challenger was scored on, with the same code. The challenger
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

import numpy as np

from pipeline.errors import UserError
from pipeline.evaluate import Scores, read_predictions, refuse_non_finite
from pipeline.files import append_lines, write_atomic
from pipeline.log import load_tensorflow
from pipeline.params import HEADLINE, LOWER_IS_BETTER, PromoteParams, load_params
from pipeline.save import LITE_FILE

logger = logging.getLogger(__name__)
SHIPPED = ("model.keras", "serving", LITE_FILE, "model_card.md", "model_card.json")


def champion_metrics(production: Path, records: Path, threshold: float,
                     batch_size: int) -> tuple[dict, Scores]:
    """Score the production model on the test split, exactly as the evaluate stage scores;
    its figures and its per-image scores."""
    load_tensorflow()
    from pipeline import features
    from pipeline.evaluate import predict_test, summary
    from pipeline.model import load

    meta = features.read_meta(records)
    contract = json.loads((production / "model_card.json").read_text())["input"]
    if contract["class_names"] != meta["class_names"]:
        raise _IncomparableError(f"its classes {contract['class_names']} are not the records' "
                            f"{meta['class_names']}")
    if contract["image_size"] != meta["image_size"] or contract["resize"] != meta["resize"]:
        raise _IncomparableError(f"it takes {contract['image_size']} px `{contract['resize']}` images, "
                            f"the records hold {meta['image_size']} px `{meta['resize']}`")
    model = load(production / "model.keras")
    scores = predict_test(model, records, meta["image_size"], batch_size)
    return summary(scores, meta["class_names"], threshold), scores


def paired_test(challenger: dict[str, tuple[int, float]], champion: Scores, threshold: float,
                params: PromoteParams, resamples: int, seed: int,
                interval: float) -> dict | None:
    """The paired bootstrap of challenger minus champion on the images both were scored on
    (None when they share none)."""
    from pipeline.bootstrap import paired_difference

    common = [i for i, sha in enumerate(champion.sha256) if sha in challenger]
    if not common:
        return None
    ours = np.array([challenger[champion.sha256[i]][1] for i in common])
    return paired_difference(champion.actual[common], ours, champion.probability[common],
                             threshold, params.metric, resamples, interval, seed)


class _IncomparableError(Exception):
    """The champion cannot be scored on these records (other classes or input size)."""


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


def _against_champion(production: Path, metrics_file: Path, records: Path, params: PromoteParams,
                      threshold: float, batch_size: int,
                      bootstrap: tuple[int, int, float]) -> tuple[dict | None, dict | None, str]:
    """The champion's figures on these records, the paired test (resamples, seed, interval),
    and a note when the champion cannot be scored on them."""
    try:
        champion, images = champion_metrics(production, records, threshold, batch_size)
    except _IncomparableError as why:
        return None, None, f"the champion cannot be scored on these records ({why}); "
    test = paired_test(read_predictions(metrics_file.parent / "predictions.csv"), images,
                       threshold, params, *bootstrap)
    return champion, test, ""


def promote(models: Path, metrics_file: Path, records: Path, out: Path, params: PromoteParams,
            threshold: float, batch_size: int, run_name: str = "", resamples: int = 1000,
            seed: int = 0, interval: float = 0.95) -> dict:
    """Compare, promote if better, record the decision; return it."""
    if not metrics_file.exists():
        raise UserError(f"{metrics_file}: not found; run the evaluate stage first (dvc repro)")
    challenger_metrics = json.loads(metrics_file.read_text())
    refuse_non_finite(challenger_metrics, metrics_file)  # a broken model is never promoted
    if params.metric not in challenger_metrics:
        raise UserError(f"{metrics_file} has no `{params.metric}`; set promote.metric in params.yaml "
                        f"to one of {', '.join(HEADLINE)}")
    production = models / "production"
    champion: dict | None = None
    note, test = "", None
    same_model = (production / "model.keras").exists() and _same_file(
        production / "model.keras", models / "model.keras")
    if same_model:
        # Nothing upstream changed (a new training run writes a new file): no need to score it.
        champion = challenger_metrics
    elif (production / "model.keras").exists():
        champion, test, note = _against_champion(production, metrics_file, records, params,
                                                 threshold, batch_size, (resamples, seed, interval))
    challenger_score = float(challenger_metrics[params.metric])
    champion_score = None if champion is None else float(champion[params.metric])
    promoted, reason = (decide_paired(test, params) if test is not None else
                        decide(challenger_score, champion_score, params.metric, params.margin))
    if same_model:
        reason = "the new model is the production model itself (the same file): the champion stays"
    if note:
        promoted, reason = True, note + "the challenger is promoted"
    decision = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "run": run_name, "metric": params.metric, "margin": params.margin,
        "confidence": params.confidence, "paired_test": test,
        "challenger": challenger_score, "champion": champion_score,
        "promoted": promoted, "reason": reason,
        "challenger_metrics": {k: challenger_metrics[k] for k in HEADLINE},
        "champion_metrics": None if champion is None else {k: champion[k] for k in HEADLINE},
        "test_images": challenger_metrics["images"],
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
    parser.add_argument("--records", type=Path, default=Path("data/tfrecords"))
    parser.add_argument("--out", type=Path, default=Path("reports/promote"))
    parser.add_argument("--run-name", default="", help="recorded with the decision (the flow run)")


def run(args: argparse.Namespace) -> None:
    params = load_params(args.params)
    decision = promote(args.models, args.metrics, args.records, args.out, params.promote,
                       params.evaluate.threshold, params.evaluate.batch_size, args.run_name,
                       params.evaluate.bootstrap_resamples, params.seed, params.evaluate.confidence)
    logger.info("promote: %s: %s", "PROMOTED" if decision["promoted"] else "kept the champion",
                decision["reason"])
