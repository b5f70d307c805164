"""Benchmark of the clean stage's bookkeeping at 1M records: reading a 1M-record manifest, and
grouping 1M images by their confirmed near-duplicate pairs, each with its time and peak memory.

The manifest is synthetic (records shaped as the scrape stage writes them); the grouping is
``group_by_representative`` on 1M images with 1M confirmed pairs (1% planted copies plus
chance pairs). Each part runs in a fresh process, so its peak RSS is its own (the baseline is
an interpreter that imports the same modules and does nothing).

Run: ``uv run python -m bench.manifest_scale [--records N]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import print_table

Row = tuple[str, str, str]
REPO = Path(__file__).resolve().parents[1]

PROBE = """
import json, resource, sys, time
from pathlib import Path
import numpy as np
from pipeline.contracts.raw import read_manifest
from pipeline.vision.near_duplicates import group_by_representative
what, folder, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
start = time.perf_counter()
if what == "manifest":
    records = list(read_manifest(folder))
    assert len(records) == n
elif what == "group":
    rng = np.random.default_rng(0)
    pairs = np.sort(rng.integers(0, n, size=(n, 2)), axis=1)
    pairs = pairs[pairs[:, 0] < pairs[:, 1]]
    scores = rng.random(len(pairs)).astype(np.float32)
    start = time.perf_counter()
    representative, _ = group_by_representative(n, pairs, scores)
    assert len(representative) == n
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _probe(what: str, folder: Path, n: int) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, what, str(folder), str(n)], cwd=REPO,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _manifest(folder: Path, n: int) -> int:
    """A manifest of ``n`` synthetic records; its size in bytes."""
    from pipeline.contracts.raw import MANIFEST

    with (folder / MANIFEST).open("w") as out:
        for i in range(n):
            label = ("happy", "sad")[i % 2]
            sha = f"{i:064x}"
            out.write(json.dumps({
                "url": f"https://images.example.org/{label}/{i}.jpg", "final_url": f"https://cdn.example.org/{i}.jpg",
                "page_url": f"https://example.org/gallery/{i // 40}", "source": "gallery", "query": label,
                "label": label, "sha256": sha, "path": f"{label}/{sha[:2]}/{sha}.jpg", "bytes": 48213,
                "content_type": "image/jpeg", "format": "JPEG", "width": 640, "height": 480,
                "licence": "cc-by", "attribution": "someone", "fetched_at": "2026-12-06T12:00:00+00:00",
                "licence_url": "https://creativecommons.org/licenses/by/4.0/", "creator": "someone"},
                sort_keys=True) + "\n")
    return (folder / MANIFEST).stat().st_size


def rows(work: Path, n: int) -> list[Row]:
    size = _manifest(work, n)
    baseline = _probe("nothing", work, n)["peak_mb"]
    manifest = _probe("manifest", work, n)
    group = _probe("group", work, n)
    return [
        (f"read a {n:,}-record manifest ({size / 1e6:.0f} MB)", f"{manifest['seconds']:.1f} s",
         f"peak {manifest['peak_mb']:.0f} MB ({manifest['peak_mb'] - baseline:.0f} MB over an idle "
         f"interpreter's {baseline:.0f} MB)"),
        (f"group {n:,} images by ~{n:,} confirmed pairs", f"{group['seconds']:.1f} s",
         f"peak {group['peak_mb']:.0f} MB ({group['peak_mb'] - baseline:.0f} MB over idle)"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.manifest_scale",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="happysad-bench-manifest-") as work:
        print_table("the clean stage's bookkeeping at scale", rows(Path(work), args.records))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
