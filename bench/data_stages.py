"""Benchmark of the data stages (clean, split, tfrecords), each beside its baseline in one run.

1. clean: images/s on the default demo site's crawl.
2. near-duplicate search on 10k/100k/1M random hashes with 1% planted neighbours,
   beside blocked brute-force numpy (all pairs) where that is affordable.
3. near-duplicate recall per edit (re-encode, resize, 4% crop, 3-degree rotation)
   and precision, on faces from the demo generator, at params.yaml's threshold.
4. tfrecords: images/s against a plain single-process PIL decode+resize loop
   over the same files, on the demo crawl (small images) and on photo-size faces.
5. reading: the TFRecords through tf.data against
   keras.utils.image_dataset_from_directory over the same images, on both sets.
6. peak memory (RSS) of the clean and tfrecords stages at two dataset sizes.

Run: ``uv run python -m bench.data_stages [--quick]``; the search alone at several radii:
``uv run python -m bench.data_stages --search-only --bits 10 12 16 --sizes 100000 1000000``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from bench import print_table
from bench.crawl import impolite
from demo.faces import FaceStyle, draw_face
from pipeline.config.params import Params, load_params
from pipeline.stages.clean import clean
from pipeline.stages.scrape import scrape
from pipeline.stages.split import split
from pipeline.stages.tfrecords import tfrecords
from pipeline.vision.near_duplicates import hamming, near_duplicate_pairs, phash

Row = tuple[str, str, str]


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - started, result


def brute_force_pairs(hashes: np.ndarray, max_bits: int, block: int = 2048) -> int:
    found = 0
    for start in range(0, len(hashes), block):
        dist = hamming(hashes[start:start + block, None], hashes[None, :])
        i, j = np.nonzero(dist <= max_bits)
        found += int(((i + start) < j).sum())
    return found


def planted_hashes(n: int, rng: np.random.Generator) -> np.ndarray:
    hashes = rng.integers(0, 2**64 - 1, size=n, dtype=np.uint64, endpoint=True)
    k = n // 100
    flips = rng.integers(0, 64, size=(k, 8))
    for row, bits in enumerate(flips):
        value = hashes[row]
        for bit in bits[: rng.integers(0, 9)]:
            value ^= np.uint64(1) << np.uint64(int(bit))
        hashes[n - k + row] = value
    return hashes


def search_rows(sizes: list[int], max_bits: int) -> list[Row]:
    import tracemalloc

    rng = np.random.default_rng(0)
    rows: list[Row] = []
    previous = None
    for n in sizes:
        hashes = planted_hashes(n, rng)
        tracemalloc.start()  # numpy reports its arrays to tracemalloc
        seconds, pairs = timed(near_duplicate_pairs, hashes, max_bits)
        peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        growth = f", x{seconds / previous[1]:.1f} for x{n // previous[0]} hashes" if previous else ""
        note = f"at <= {max_bits} bits: {len(pairs)} pairs, peak {peak_mb:.0f} MB{growth}"
        if n <= 30_000:
            brute_s, brute_n = timed(brute_force_pairs, hashes, max_bits)
            note += f"; brute force {brute_s:.2f} s, same {brute_n} pairs"
            extrapolated = brute_s * (10**6 / n) ** 2
            note += f" (quadratic: ~{extrapolated / 3600:.1f} h at 1M)"
        rows.append((f"near-duplicate search, {n:,} hashes", f"{seconds:.2f} s", note))
        previous = (n, seconds)
    return rows


def _edit(face: Image.Image, edit: str, rng: np.random.Generator) -> Image.Image:
    w, h = face.size
    if edit == "re-encode":
        buf = io.BytesIO()
        face.save(buf, "JPEG", quality=int(rng.integers(30, 60)))
        return Image.open(buf)
    if edit == "resize":
        scale = rng.uniform(0.5, 0.8)
        return face.resize((int(w * scale), int(h * scale)))
    if edit == "crop 4%":
        return face.crop((w // 25, h // 25, w - w // 25, h - h // 25))
    return face.rotate(3, resample=Image.Resampling.BICUBIC)


def recall_rows(n_faces: int, max_bits: int) -> list[Row]:
    rng = np.random.default_rng(1)
    edits = ("re-encode", "resize", "crop 4%", "rotate 3 deg")
    faces = [draw_face(rng, ("happy", "sad")[i % 2]) for i in range(n_faces)]
    hashes, origin = [], []
    for index, face in enumerate(faces):
        hashes.append(phash(face))
        origin.append((index, "original"))
        for edit in edits:
            hashes.append(phash(_edit(face, edit, rng)))
            origin.append((index, edit))
    pairs = near_duplicate_pairs(np.array(hashes, dtype=np.uint64), max_bits)
    found = {(int(a), int(b)) for a, b in pairs}
    true_pairs = sum(1 for a, b in found if origin[a][0] == origin[b][0])
    rows = []
    for edit in edits:
        hits = sum(1 for i, (face, kind) in enumerate(origin) if kind == edit
                   and (i - edits.index(edit) - 1, i) in found)
        rows.append((f"near-duplicate recall, {edit}", f"{hits / n_faces:.2f}",
                     f"{hits}/{n_faces} edited copies found at <= {max_bits} bits"))
    rows.append(("near-duplicate precision", f"{true_pairs / max(len(found), 1):.3f}",
                 f"{true_pairs} of {len(found)} pairs found are copies of one face "
                 f"({len(hashes)} images)"))
    return rows


def pil_loop(paths: list[Path], size: int) -> None:
    for path in paths:
        Image.open(path).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)


def read_rows(name: str, records: Path, raw: Path, split_file: Path, size: int, epochs: int) -> list[Row]:
    import keras
    import tensorflow as tf

    from pipeline.contracts import features

    folder = records.parent / "by_class"
    for row in map(json.loads, split_file.read_text().splitlines()):
        target = folder / row["label"] / Path(row["file"]).name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.symlink_to((raw / row["file"]).resolve())

    def ours() -> tf.data.Dataset:
        parts = [features.dataset(records, s, size) for s in ("train", "val", "test")]
        data = parts[0].concatenate(parts[1]).concatenate(parts[2])
        return data.map(lambda r: (r["image"], r["label"])).batch(32).prefetch(tf.data.AUTOTUNE)

    def keras_dir() -> tf.data.Dataset:
        return keras.utils.image_dataset_from_directory(
            folder, image_size=(size, size), batch_size=32, shuffle=False,
            verbose=False).prefetch(tf.data.AUTOTUNE)

    def rate(make) -> float:
        data = make()
        count, started = 0, time.perf_counter()
        for _ in range(epochs):
            for images, _ in data:
                count += int(images.shape[0])
        return count / (time.perf_counter() - started)

    rate(ours)  # warm both (graph tracing, file cache)
    rate(keras_dir)
    ours_rate, keras_rate = rate(ours), rate(keras_dir)
    return [(f"reading TFRecords through tf.data, {name}", f"{ours_rate:.0f} img/s",
             f"x{ours_rate / keras_rate:.1f} image_dataset_from_directory's "
             f"{keras_rate:.0f} img/s on the same images ({epochs} epochs, batch 32)")]


def _photo(args: tuple[Path, int]) -> None:
    target, seed = args
    rng = np.random.default_rng(seed)
    label = ("happy", "sad")[seed % 2]
    face = draw_face(rng, label, FaceStyle(min_side=640, max_side=1600))
    (target / label).mkdir(parents=True, exist_ok=True)
    face.save(target / label / f"{seed:05d}.jpg", "JPEG", quality=90)


def photo_set(folder: Path, n: int) -> None:
    """n demo faces at the sizes web photos come in, with a split file over all of them."""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor() as pool:
        list(pool.map(_photo, [(folder, i) for i in range(n)], chunksize=8))
    rows = [{"file": f"{('happy', 'sad')[i % 2]}/{i:05d}.jpg", "label": ("happy", "sad")[i % 2],
             "sha256": f"{i:064x}", "split": ("train", "val", "test")[i % 3]} for i in range(n)]
    (folder / "split.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def stage_seconds(split_file: Path, raw: Path, out: Path) -> float:
    """The tfrecords stage function's own time, run as ``python -m pipeline`` runs it.

    A fresh ``-c`` process: its spawned workers import only what the stage's workers
    import (in this process they would also import this benchmark module).
    """
    code = ("import sys, time; from pathlib import Path; from pipeline.config.params import load_params;"
            " from pipeline.stages.tfrecords import tfrecords; p = load_params(Path('params.yaml'));"
            " t = time.perf_counter(); tfrecords(*map(Path, sys.argv[1:4]), p.tfrecords);"
            " print(time.perf_counter() - t)")
    result = subprocess.run([sys.executable, "-c", code, str(split_file), str(raw), str(out)],
                            capture_output=True, text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1])


def tfrecords_rows(name: str, raw: Path, split_file: Path, work: Path, params: Params,
                   repeats: int) -> list[Row]:
    """Write speed beside the PIL loop, then read speed beside image_dataset_from_directory."""
    work.mkdir(parents=True)
    lines = split_file.read_text().splitlines()
    (work / "big.jsonl").write_text("\n".join(lines * repeats) + "\n")
    paths = [raw / json.loads(r)["file"] for r in lines] * repeats
    size = params.tfrecords.image_size
    pil_s, _ = timed(pil_loop, paths, size)
    ours_s = stage_seconds(work / "big.jsonl", raw, work / "records-big")
    rows = [(f"tfrecords stage, {name}", f"{len(paths) / ours_s:.0f} img/s",
             f"x{pil_s / ours_s:.2f} the single-process PIL decode+resize loop's "
             f"{len(paths) / pil_s:.0f} img/s ({len(paths)} images to {size} px, our side "
             "also JPEG-encodes and writes)")]
    tfrecords(split_file, raw, work / "records", params.tfrecords)
    return rows + read_rows(name, work / "records", raw, split_file, size, epochs=3)


def peak_rss_mb(command: list[str], cwd: Path) -> float:
    """Peak resident memory of the largest process of ``command`` (workers included)."""
    wrapper = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:],"
               " stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True);"
               " sys.exit(r.stderr[-2000:]) if r.returncode else"
               " print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    result = subprocess.run([sys.executable, "-c", wrapper, *command], cwd=cwd,
                            capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command[2:])} failed: {result.stderr.strip()}")
    return int(result.stdout.strip()) / 1024


def _copy_variant(args: tuple[list[Path], Path, int]) -> None:
    """A new image: four demo faces tiled 2x2, so copies differ in content, not just tint."""
    sources, target, seed = args
    rng = np.random.default_rng(seed)
    tiles = [Image.open(sources[i]).convert("RGB").resize((160, 160))
             for i in rng.choice(len(sources), 4, replace=False)]
    mosaic = Image.new("RGB", (320, 320))
    for k, tile in enumerate(tiles):
        mosaic.paste(tile, (160 * (k % 2), 160 * (k // 2)))
    buf = io.BytesIO()
    mosaic.save(buf, "JPEG", quality=90)
    target.write_bytes(buf.getvalue())


def synthetic_raw(base_raw: Path, out: Path, n: int) -> None:
    """A raw folder of n distinct images (mosaics of the demo crawl's faces), new records."""
    import hashlib
    from concurrent.futures import ProcessPoolExecutor

    from pipeline.contracts.raw import RawStore, read_manifest

    kept = {json.loads(line)["sha256"] for line in
            (base_raw.parent / "clean" / "images.jsonl").read_text().splitlines()}
    faces = [r for r in read_manifest(base_raw) if r.sha256 in kept]
    by_label = {label: [base_raw / r.path for r in faces if r.label == label]
                for label in sorted({r.label for r in faces})}
    jobs = [(by_label[faces[i % len(faces)].label], out / f"job-{i}.jpg", i) for i in range(n)]
    out.mkdir(parents=True)
    with ProcessPoolExecutor() as pool:
        list(pool.map(_copy_variant, jobs, chunksize=64))
    store = RawStore(out)
    lines = []
    for i, (_, tmp, _) in enumerate(jobs):
        data = tmp.read_bytes()
        tmp.unlink()
        record = faces[i % len(faces)]
        path, sniffed, _ = store.store(record.label, data)
        lines.append(replace(record, url=f"{record.url}?copy={i}", sha256=hashlib.sha256(data)
                             .hexdigest(), path=path, bytes=len(data)).to_json())
    (out / "manifest.jsonl").write_text("\n".join(lines) + "\n")


def memory_rows(base_raw: Path, work: Path, sizes: list[int], params_file: Path) -> list[Row]:
    rows: list[Row] = []
    for n in sizes:
        raw = work / f"raw-{n}"
        synthetic_raw(base_raw, raw, n)
        cli = [sys.executable, "-m", "pipeline", "--params", str(params_file)]
        clean_mb = peak_rss_mb([*cli, "clean", "--raw", str(raw), "--out", str(work / f"c{n}")],
                               Path.cwd())
        kept = len((work / f"c{n}" / "images.jsonl").read_text().splitlines())
        split_mb = peak_rss_mb([*cli, "split", "--images", str(work / f"c{n}" / "images.jsonl"),
                                "--out", str(work / f"s{n}")], Path.cwd())
        records_mb = peak_rss_mb([*cli, "tfrecords", "--split", str(work / f"s{n}" / "split.jsonl"),
                                  "--raw", str(raw), "--out", str(work / f"t{n}")], Path.cwd())
        manifest_mb = (raw / "manifest.jsonl").stat().st_size / 2**20
        rows.append((f"peak memory at {n:,} images", f"{clean_mb:.0f} MB",
                     f"clean; split {split_mb:.0f} MB, tfrecords {records_mb:.0f} MB "
                     f"(manifest {manifest_mb:.1f} MB; {kept:,} images kept by clean)"))
    return rows


def search_only_rows(radii: list[int], sizes: list[int]) -> list[Row]:
    rows: list[Row] = []
    for bits in radii:
        rows += search_rows(sizes, bits)
        rows += [(f"{name} at {bits} bits", value, note) for name, value, note in recall_rows(300, bits)]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, no 1M or 50k runs")
    parser.add_argument("--search-only", action="store_true",
                        help="only the near-duplicate search and recall, at each of --bits")
    parser.add_argument("--bits", type=int, nargs="+", default=None,
                        help="search radii for --search-only (default: params.yaml's)")
    parser.add_argument("--sizes", type=int, nargs="+", default=None,
                        help="numbers of hashes for --search-only (default: 10k 100k 1M)")
    args = parser.parse_args(argv)
    params: Params = load_params(Path("params.yaml"))
    search_sizes = [10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000]
    if args.search_only:
        print_table("happysad near-duplicate search", search_only_rows(
            args.bits or [params.clean.near_duplicate_bits], args.sizes or search_sizes))
        return 0
    memory_sizes = [2_000, 10_000] if args.quick else [10_000, 50_000]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="happysad-bench-") as tmp:
        work = Path(tmp)
        demo = params.demo_site
        fast = impolite(params, 16)
        scrape(fast.scrape, demo, work / "raw", work / "reports", work / "site")
        seconds, report = timed(clean, work / "raw", work / "clean", params.clean)
        n_files = report.unique_files
        rows.append(("clean, default demo crawl", f"{n_files / seconds:.0f} img/s",
                     f"{n_files} files in {seconds:.1f} s on {os.cpu_count()} cores"))
        rows += search_rows(search_sizes, params.clean.near_duplicate_bits)
        rows += recall_rows(100 if args.quick else 300, params.clean.near_duplicate_bits)

        split(work / "clean" / "images.jsonl", work / "split", params.split)
        import tensorflow  # noqa: F401 - imported once up front, not inside a timing

        rows += tfrecords_rows("demo crawl, 160-320 px", work / "raw", work / "split" / "split.jsonl",
                               work / "demo", params, repeats=16)
        photos = work / "photos"
        photo_set(photos, 150 if args.quick else 400)
        rows += tfrecords_rows("photo-size faces, 640-1600 px", photos, photos / "split.jsonl",
                               work / "photo", params, repeats=4)

        params_file = work / "params.yaml"
        data = yaml.safe_load(Path("params.yaml").read_text())
        data["split"] = {"seed": 1, "fractions": {"train": 0.7, "val": 0.15, "test": 0.15}}
        params_file.write_text(yaml.safe_dump(data))
        rows += memory_rows(work / "raw", work / "memory", memory_sizes, params_file)

    print_table("happysad data-stages benchmark", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
