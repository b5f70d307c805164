"""A model for real photos: what each train option scores on the dev web set, and FER-2013.

1. FER-2013 (``../shared/data/fer2013-happysad-trainval.tar``): the seed CNN trained on
   ``train`` (early-stopping on a 15% val share of it) and scored on ``validation``, kept out
   as the test split (every near-duplicate group touching ``validation`` goes to test), at
   64 px: accuracy and ROC AUC with 95% intervals; with ``--fer preset`` the same for
   presets/faces.yaml's settings (``preset_label_smoothing``: with label smoothing 0.1;
   ``faces_48``: an earlier candidate). These models are the warm starts of step 2.
2. The dev web set (``../shared/data/webfaces-happysad-dev.tar``), 5-fold grouped crossval of
   split seed 1337's train and val images (as ``bench.crossval``), one row per option: the
   seed CNN, + face crops, the seed CNN warm-started from step 1's FER model (+ face crops, at
   FER's scale), the face preset (from scratch, and warm-started from its FER model), and each
   Keras application backbone from random initialisation (ImageNet
   weights cannot be fetched here: their score is not measured, and not guessed).
3. The face crop's cost per image (detection on top of decode and resize).

Run: ``uv run python -m bench.real_photos [--work DIR] [--options a,b]``; with ``--work``
finished steps are kept in ``DIR/results.json`` and not run again.
"""

from __future__ import annotations

import argparse
import json
import tarfile
import time
from pathlib import Path

from bench import print_table
from bench.crossval import DEV_TAR, REPO, _clean, _cv_rows, _step, cv_summary, kept_results
from pipeline.config.params import Params, load_params

FER_TAR = REPO.parent / "shared" / "data" / "fer2013-happysad-trainval.tar"
# FER-2013 runs: the seed CNN's defaults at 64 px, and candidate settings for face data.
FER_VARIANTS = {
    "default": {"tfrecords": {"image_size": 64},
                "train": {"epochs": 15}},  # 12,000 faces: a few passes are enough; more overfit
    # FER's own 48 px, every pixel kept (no stride-2 first layer), wider blocks, more dropout
    "faces_48": {"tfrecords": {"image_size": 48},
                 "train": {"first_stride": 1, "filters": [32, 64, 128, 256, 256], "dropout": 0.3,
                           "batch_size": 32, "epochs": 30}},
}


def preset(name: str = "faces") -> dict[str, dict]:
    """presets/NAME.yaml's sections, read as `happysad preset` reads them."""
    from pipeline.tools.preset import read

    return read(REPO / "presets" / f"{name}.yaml")


# presets/faces.yaml as it stands, and with changes that may join it
PRESET_VARIANTS = {"preset": {}, "preset_label_smoothing": {"train": {"label_smoothing": 0.1}}}


def _fer_variant(name: str) -> dict[str, dict]:
    """FER_VARIANTS[name], or a PRESET_VARIANTS one on presets/faces.yaml without its face crop
    (FER's images are face crops already)."""
    if name not in PRESET_VARIANTS:
        return FER_VARIANTS[name]
    faces = preset()
    return _merged({"tfrecords": {**faces["tfrecords"], "crop": "none"}, "train": faces["train"]},
                   PRESET_VARIANTS[name])


def _options(fer: Path) -> dict[str, dict]:
    """Option name -> changes to the tfrecords and train sections; ``fer``: step 1's folder."""
    fine_tune = {"frozen_epochs": 2, "from_layer": "", "learning_rate": 0.0003}
    warm = {"init_from": str(fer / "model" / "model.keras"), "fine_tune": fine_tune}
    faces = preset()
    smoothed = _merged(faces, PRESET_VARIANTS["preset_label_smoothing"])

    def from_fer(variant: str) -> dict:  # a warm start from that FER variant's model
        return {"train": {"init_from": str(fer / variant / "model" / "model.keras"),
                          "fine_tune": fine_tune}}

    return {
        "faces_preset": faces,
        "faces_preset_fer_warm_start": _merged(faces, from_fer("preset")),
        "faces_preset_label_smoothing": smoothed,
        "faces_preset_fer_warm_start_label_smoothing": _merged(smoothed, from_fer("preset_label_smoothing")),
        # the FER model trained with label smoothing, fine-tuned here without it
        "faces_preset_fer_warm_start_from_label_smoothing": _merged(
            faces, from_fer("preset_label_smoothing")),
        "seed_cnn": {},
        "seed_cnn_face_crops": {"tfrecords": {"crop": "face"}},
        "seed_cnn_face_crops_64px": {"tfrecords": {"crop": "face", "image_size": 64}},
        "seed_cnn_fer_warm_start_face_crops_64px": {"tfrecords": {"crop": "face", "image_size": 64},
                                                   "train": warm},
        "seed_cnn_fer_warm_start_64px": {"tfrecords": {"image_size": 64}, "train": warm},
        "seed_cnn_fer_warm_start_face_crops_64px_no_frozen_phase": {
            "tfrecords": {"crop": "face", "image_size": 64},
            "train": {"init_from": warm["init_from"], "learning_rate": 0.0003}},
        "mobilenet_v3_small_random_128px": {"tfrecords": {"image_size": 128}, "train": {
            "backbone": "mobilenet_v3_small", "weights": "none"}},
        "efficientnet_b0_random_128px": {"tfrecords": {"image_size": 128}, "train": {
            "backbone": "efficientnet_b0", "weights": "none"}},
    }


def _merged(base: dict, changes: dict) -> dict:
    """``base`` with ``changes`` set in, nested mappings merged key by key."""
    return {**base, **{k: _merged(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict)
                       else v for k, v in changes.items()}}


def _varied(params: Params, changes: dict) -> Params:
    """``params`` with ``changes`` merged into its sections, as `happysad preset` merges them."""
    sections = {name: getattr(params, name).model_validate(
        _merged(getattr(params, name).model_dump(), changes[name])) for name in changes}
    return params.model_copy(update=sections)


def _records(work: Path, params: Params, name: str, split_file: Path, raw: Path) -> Path:
    from pipeline.stages.tfrecords import tfrecords

    out = work / f"records-{name}"
    if not (out / "meta.json").exists():
        tfrecords(split_file, raw, out, params.tfrecords, params.faces)
    return out


def _dev_split(work: Path, params: Params) -> Path:
    from pipeline.stages.split import split

    out = work / f"seed-{params.split.seed}" / "split"
    if not (out / "split.jsonl").exists():
        split(work / "clean" / "images.jsonl", out, params.split)
    return out / "split.jsonl"


def _dev_option(work: Path, params: Params, name: str, changes: dict, folds: int) -> dict:
    import keras

    from pipeline.ml.crossval import cross_validate

    varied = _varied(params, changes)
    split_file = _dev_split(work, params)
    records = _records(work, varied, name, split_file, work / "raw")
    meta = json.loads((records / "meta.json").read_text())
    started = time.perf_counter()
    results, _ = cross_validate(records, split_file, work / "cv", varied, folds)
    keras.backend.clear_session()
    return {**cv_summary(results, meta["class_names"], varied, started), "faces": meta.get("faces")}


def _fer_split(tar: Path, work: Path, params: Params) -> Path:
    """FER's train and validation cleaned together and split by folder (validation -> test;
    train's groups 85/15 into train and val), once; the split file."""
    from pipeline.contracts.split import split_of
    from pipeline.runtime.outputs import write_jsonl
    from pipeline.scrape.folder import import_folder
    from pipeline.stages.clean import clean

    fer = work / "fer"
    if (fer / "split.jsonl").exists():
        return fer / "split.jsonl"
    with tarfile.open(tar) as archive:
        archive.extractall(fer / "unpacked", filter="data")
    for part in ("train", "validation"):
        import_folder(f"fer-{part}", str(fer / "unpacked" / part), ["happy", "sad"], fer / "raw",
                      max_images=10**9, max_bytes=2**30, progress_every_s=1e9)
    clean(fer / "raw", fer / "clean", params.clean.model_copy(update={"min_side": 32}))
    source = {r["sha256"]: r["source"] for r in map(json.loads, (fer / "raw" / "manifest.jsonl").open())}
    rows = [json.loads(line) for line in (fer / "clean" / "images.jsonl").open()]
    held_out = {r["group"] for r in rows if source[r["sha256"]] == "fer-validation"}
    inner = params.split.model_copy(update={"fractions": {"train": 0.85, "val": 0.149, "test": 0.001}})
    for row in rows:  # the 0.1% "test" of train's groups stays in train: test is validation's
        drawn = split_of(row["group"], inner.fractions, inner.seed)
        row["split"] = "test" if row["group"] in held_out else "train" if drawn == "test" else drawn
    write_jsonl(fer / "split.jsonl", rows)
    return fer / "split.jsonl"


def _fer(tar: Path, work: Path, params: Params, name: str = "default") -> dict:
    """Train FER_VARIANTS[name] on FER's train split and score the held-out validation faces;
    the default's model is the dev set's warm start."""
    import keras

    from pipeline.ml.fit import train
    from pipeline.stages.evaluate import evaluate

    split_file = _fer_split(tar, work, params)
    fer = split_file.parent
    varied = _varied(params, _fer_variant(name))
    size = varied.tfrecords.image_size
    records = _records(fer, varied, f"{size}px", split_file, fer / "raw")
    out = fer if name == "default" else fer / name
    started = time.perf_counter()
    report = train(records, out / "model", out / "train", varied.train, params.seed)
    metrics = evaluate(out / "model" / "model.keras", records, out / "train", out / "evaluate",
                       params.evaluate, params.seed)
    keras.backend.clear_session()
    meta = json.loads((records / "meta.json").read_text())
    return {"accuracy": metrics["accuracy"], "interval": metrics["intervals"]["accuracy"],
            "roc_auc": metrics["roc_auc"], "auc_interval": metrics["intervals"]["roc_auc"],
            "images": metrics["images"], "counts": meta["counts"], "best_epoch": report.best_epoch,
            "epochs_run": report.epochs_run, "images_per_second": report.images_per_second,
            "seconds": round(time.perf_counter() - started, 1), "image_size": size}


def _crop_cost(work: Path, params: Params, images: int = 200) -> dict:
    """Seconds per dev image to decode and resize to 256 px, without and with the face crop."""
    from pipeline.stages.tfrecords import crop_contract
    from pipeline.vision.faces import FaceCrop
    from pipeline.vision.images import square_rgb

    files = sorted((work / "raw").glob("*/*"))[:images]
    datas = [f.read_bytes() for f in files]
    crop = FaceCrop.of(crop_contract(params.tfrecords.model_copy(update={"crop": "face"}),
                                     params.faces))
    timings = {}
    for name, option in (("plain", None), ("face_crop", crop)):
        started = time.perf_counter()
        for data in datas:
            square_rgb(data, 256, "pad", threads=1, crop=option)
        timings[name] = (time.perf_counter() - started) / len(datas)
    return timings


def _best_row(cv: dict[str, dict]) -> list[tuple[str, str, str]]:
    """The best option against the seed CNN's defaults, when both ran."""
    if "seed_cnn" not in cv or len(cv) < 2:
        return []
    best = max((name for name in cv if name != "seed_cnn"), key=lambda n: cv[n]["pooled_accuracy"])
    gain = cv[best]["pooled_accuracy"] - cv["seed_cnn"]["pooled_accuracy"]
    return [(f"best option: {best}", f"{gain:+.3f}",
             "pooled accuracy over seed_cnn (the defaults); target >= +0.05")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.real_photos",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="keep finished steps here (default: a temp folder)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--options", help="comma-separated dev options (default: all)")
    parser.add_argument("--fer", help="comma-separated FER variants besides the default: "
                        f"{', '.join([*FER_VARIANTS][1:])}, {', '.join(PRESET_VARIANTS)} "
                        "(presets/faces.yaml)")
    parser.add_argument("--fer-only", action="store_true", help="stop after FER")
    args = parser.parse_args(argv)
    if not (DEV_TAR.exists() and FER_TAR.exists()):
        print(f"bench.real_photos: {DEV_TAR} or {FER_TAR} not found; skipped")  # noqa: T201
        return 0
    params = load_params(REPO / "params.yaml")
    with kept_results(args.work) as (work, store, results):
        fer_rows = []
        for variant in ["default", *(args.fer.split(",") if args.fer else [])]:
            key = "fer" if variant == "default" else f"fer-{variant}"
            fer = _step(results, store, key, lambda v=variant: _fer(FER_TAR, work, params, v))
            interval, auc = fer["interval"], fer["auc_interval"]
            fer_rows += [
                (f"{variant}: test accuracy", f"{fer['accuracy']:.3f}", f"95% {interval['low']:.3f}-"
                 f"{interval['high']:.3f} on {fer['images']} faces; target >= 0.92"),
                (f"{variant}: test ROC AUC", f"{fer['roc_auc']:.3f}",
                 f"95% {auc['low']:.3f}-{auc['high']:.3f}"),
                (f"{variant}: training", f"{fer['seconds'] / 60:.1f} min",
                 f"{fer.get('image_size', 64)} px; best epoch {fer['best_epoch']} of "
                 f"{fer['epochs_run']}; {fer['images_per_second']:.0f} images/s; {fer['counts']}")]
        print_table("FER-2013, seed CNN (train -> held-out validation)", fer_rows)
        if args.fer_only:
            return 0
        _step(results, store, "clean", lambda: _clean(DEV_TAR, work, params))
        options = _options(work / "fer")
        chosen = args.options.split(",") if args.options else list(options)
        cv = {name: _step(results, store, f"cv-{args.folds}-{name}", lambda n=name: _dev_option(
            work, params, n, options[n], args.folds)) for name in chosen}
        print_table("dev web set: grouped crossval per option", _cv_rows(cv, args.folds) + [
            (f"{name}: faces found", json.dumps(r["faces"]), "per split; the rest used whole")
            for name, r in cv.items() if r.get("faces")] + _best_row(cv))
        cost = _crop_cost(work, params)
        print_table("face crop cost (dev images, 1 thread)", [
            ("decode + resize to 256 px", f"{cost['plain'] * 1000:.1f} ms", "per image"),
            ("with the face crop", f"{cost['face_crop'] * 1000:.1f} ms",
             f"{cost['face_crop'] / cost['plain']:.1f}x; paid once, in the tfrecords stage "
             "(and per image in predict)")])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
