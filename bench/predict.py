"""Benchmark of `happysad predict`: cold start and per-image time, LiteRT against Keras.

The model is params.yaml's own network at its own image size (random weights: the
cost of a prediction does not depend on what the weights are), saved and exported
by the save stage's code, so `model.tflite` is the file `make run` ships. Each
runtime is measured side by side in one run, alternating:

- cold start: a new `python -m pipeline predict` process, from its start to its
  first JSON line on stdout (what a user waits for), and to its missing-model error;
- per image: 200 photos-sized JPEGs labelled in one process after the model is
  loaded (decode, checks, resize and the model), total time / 200.

Run: ``uv run python -m bench.predict [--repeats N]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import print_table

Row = tuple[str, str, str]
REPO = Path(__file__).resolve().parents[1]


def _model_dir(out: Path) -> Path:
    """params.yaml's network, saved as the save stage saves it: keras, serving, LiteRT, card."""
    from pipeline.runtime.log import load_tensorflow

    load_tensorflow()
    from pipeline.config.params import load_params
    from pipeline.contracts.export import LITE_FILE
    from pipeline.ml.network import build_model
    from pipeline.stages.save import export_lite

    params = load_params(REPO / "params.yaml")
    size = params.tfrecords.image_size
    model = build_model(params.train, size, params.seed, augment=False)
    out.mkdir(parents=True)
    model.save(out / "model.keras")
    model.export(str(out / "serving"), format="tf_saved_model", verbose=False)
    export_lite(model, out / "serving", out / LITE_FILE)
    card = {"input": {"class_names": list(params.scrape.classes), "image_size": size,
                      "resize": params.tfrecords.resize}, "threshold": params.evaluate.threshold}
    (out / "model_card.json").write_text(json.dumps(card))
    return out


def _images(out: Path, count: int) -> list[Path]:
    from PIL import Image

    out.mkdir(parents=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        pixels = rng.integers(0, 256, (rng.integers(300, 640), rng.integers(300, 640), 3), np.uint8)
        path = out / f"photo-{i:03d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def _first_line_s(command: list[str]) -> float:
    """Seconds from starting ``command`` to its first line on stdout (or its exit)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    assert process.stdout is not None
    process.stdout.readline()
    seconds = time.perf_counter() - started
    process.communicate()
    return seconds


def _per_image_s(model_dir: Path, images: list[Path], runtime: str) -> float:
    from pipeline.tools.predict import predict

    list(predict(images[:1], model_dir, runtime=runtime))  # load the model: not timed
    started = time.perf_counter()
    labelled = list(predict(images, model_dir, runtime=runtime))
    assert len(labelled) == len(images)
    return (time.perf_counter() - started) / len(images)


def rows(work: Path, repeats: int) -> list[Row]:
    model_dir = _model_dir(work / "model")
    images = _images(work / "images", 200)
    base = [sys.executable, "-m", "pipeline", "predict", "--model-dir", str(model_dir)]
    times: dict[str, list[float]] = {k: [] for k in ("lite", "keras", "missing", "lite_200",
                                                     "keras_200")}
    for _ in range(repeats):  # alternate, so machine noise hits each alike
        times["lite"].append(_first_line_s(base + ["--runtime", "litert", str(images[0])]))
        times["keras"].append(_first_line_s(base + ["--runtime", "keras", str(images[0])]))
        times["missing"].append(_first_line_s([sys.executable, "-m", "pipeline", "predict",
                                               "--model-dir", str(work / "none"), str(images[0])]))
    for _ in range(repeats):
        times["lite_200"].append(_per_image_s(model_dir, images, "litert"))
        times["keras_200"].append(_per_image_s(model_dir, images, "keras"))
    med = {k: statistics.median(v) for k, v in times.items()}
    spread = {k: f"{min(v):.2f}-{max(v):.2f}" for k, v in times.items()}
    size = json.loads((model_dir / "model_card.json").read_text())["input"]["image_size"]
    return [
        ("cold start to first answer, LiteRT", f"{med['lite']:.2f} s",
         f"x{med['lite'] / med['keras']:.2f} of Keras (target <= 3 s); {spread['lite']} s"),
        ("cold start to first answer, Keras", f"{med['keras']:.2f} s",
         f"baseline (imports TensorFlow); {spread['keras']} s"),
        ("missing-model error", f"{med['missing']:.2f} s", f"target <= 1 s; {spread['missing']} s"),
        (f"per image, 200 images at {size} px, LiteRT", f"{med['lite_200'] * 1000:.1f} ms",
         f"x{med['lite_200'] / med['keras_200']:.2f} of Keras; decode, checks, resize and model"),
        (f"per image, 200 images at {size} px, Keras", f"{med['keras_200'] * 1000:.1f} ms", "baseline"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.predict",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="happysad-bench-predict-") as work:
        print_table(f"happysad predict ({args.repeats} runs each, medians)",
                    rows(Path(work), args.repeats))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
