"""The cost of honest numbers: bootstrap intervals, the ROC band and the paired promotion test.

``python -m bench.bootstrap``: synthetic scores at the demo's test-split size (183) and
at 1,000 images, ``evaluate.bootstrap_resamples`` resamples, against the plain point
figures (one pass over the images) as the baseline.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from bench import print_table
from pipeline.config.params import load_params
from pipeline.ml.bootstrap import intervals, metric_values, paired_difference, roc_band

REPO = Path(__file__).resolve().parents[1]


def _timings(actual: np.ndarray, score: np.ndarray, resamples: int) -> dict[str, float]:
    n, timings = len(actual), {}
    for name, work in (
            ("point figures", lambda: metric_values(actual, score, 0.5, np.arange(n)[None])),
            ("intervals", lambda: intervals(actual, score, 0.5, resamples, 0.95, 0)),
            ("ROC band", lambda: roc_band(actual, score, resamples, 0.95, 0)),
            ("paired test", lambda: paired_difference(actual, score, np.clip(score + 0.01, 0, 1),
                                                      0.5, "loss", resamples, 0.95, 0))):
        started = time.perf_counter()
        work()
        timings[name] = time.perf_counter() - started
    return timings


def main(argv: list[str] | None = None) -> int:
    params = load_params(REPO / "params.yaml").evaluate
    resamples, rng, rows = params.bootstrap_resamples, np.random.default_rng(0), []
    for n in (183, 1000):
        actual = np.arange(n) % 2
        score = np.clip(actual * 0.6 + rng.uniform(0, 0.4, n), 0, 1)
        timings = _timings(actual, score, resamples)
        for name in ("intervals", "ROC band", "paired test"):
            rows.append((f"{name}, {n} images", f"{timings[name]:.2f} s",
                         f"{resamples} resamples; x{timings[name] / timings['point figures']:.0f} "
                         f"the point figures ({timings['point figures'] * 1000:.1f} ms)"))
    print_table("happysad bootstrap cost", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
