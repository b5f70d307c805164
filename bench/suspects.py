"""The review loop's figures: planted mislabels found, accuracy before and after fixing them,
the dev web set's flags, and how fast the review page answers.

1. ``--demo``: the whole DAG on the default demo site with ``crossval.folds`` 5, in a
   fresh copy of the project: recall and precision of the planted mislabels among
   the top 2 x planted suspects (target: recall >= 0.8 at precision >= 0.5), then the
   ground truth's corrections as review decisions and the model half again: test
   accuracy with its interval before and after.
2. ``--dev-work DIR``: the dev web set as ``bench.crossval --work DIR`` left it (its
   default 5-fold run's out-of-fold probabilities, split seed 1337's test
   predictions): images per flag, and a contact sheet of the top 40 suspects per
   class in ``reports/bench/suspects-dev.png``, to look at.
3. The review page over a 10,000-image store: index load, first answer of the page
   and of one page of items, and one page of 60 thumbnails (cold).

Run: ``uv run python -m bench.suspects [--demo] [--dev-work DIR] [--page]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from bench import print_table

REPO = Path(__file__).resolve().parents[1]
Row = tuple[str, str, str]


def _repro(project: Path, *targets: str) -> None:
    from testing.project import tool_env

    result = subprocess.run(["dvc", "repro", *targets], cwd=project, env=tool_env(),
                            capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"dvc repro failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


def _accuracy(project: Path) -> str:
    details = json.loads((project / "reports" / "evaluate" / "details.json").read_text())
    bound = details["intervals"]["accuracy"]
    return f"{details['accuracy']:.3f} ({bound['low']:.3f}-{bound['high']:.3f}, {details['images']} images)"


def demo_rows(work: Path, folds: int = 5, images_per_class: int | None = None) -> list[Row]:
    """The demo figures; a project left in ``work/demo`` by an earlier run is reused (DVC's
    cache skips the stages that ran), and its before figures in ``work/before.json``."""
    from pipeline.contracts import decisions as decision_log
    from testing.project import copy_project

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["crossval"]["folds"] = folds
    if images_per_class:
        params["demo_site"]["images_per_class"] = images_per_class
    project, saved = work / "demo", work / "before.json"
    if not (project / "dvc.yaml").exists():
        copy_project(project, yaml.safe_dump(params, sort_keys=False))
    decisions = project / "data/review/decisions.jsonl"
    if not saved.exists():
        started = time.perf_counter()
        _repro(project)
        truth = json.loads((project / "data" / "demo_site" / "ground_truth.json").read_text())
        kept = {json.loads(line)["sha256"] for line in (project / "data/clean/images.jsonl").open()}
        planted = {i["sha256"]: i["true_label"] for i in truth["images"]
                   if i["kind"] == "mislabelled" and i["sha256"] in kept}
        saved.write_text(json.dumps({"minutes": (time.perf_counter() - started) / 60,
                                     "planted": planted, "accuracy": _accuracy(project)}))
    before = json.loads(saved.read_text())
    planted = before["planted"]
    ranked = [json.loads(line) for line in (project / "reports/suspects/suspects.jsonl").open()]
    rows = [("demo: planted mislabels kept", str(len(planted)),
             f"{params['demo_site']['images_per_class']} faces per class; whole DAG with "
             f"{folds}-fold crossval: {before['minutes']:.1f} min"),
            *ranking_rows(ranked, planted)]
    if not decisions.read_text().strip():
        decision_log.append(decisions, [
            decision_log.Decision(sha, "relabel", label, decision_log.now(), "ground truth")
            for sha, label in planted.items()])
    _repro(project, "evaluate")
    return [*rows,
            ("demo: test accuracy before", before["accuracy"], "against the labels as scraped"),
            ("demo: test accuracy after", _accuracy(project), "ground truth's corrections applied "
             "as review decisions (test labels corrected too)")]


def ranking_rows(ranked: list[dict], planted: dict[str, str], label: str = "demo") -> list[Row]:
    """Recall of the planted mislabels in the top 2 x planted suspects, and precision in the
    top 1 x planted (at 2 x planted precision cannot pass 0.5 unless recall is 1)."""
    order = [r["sha256"] for r in ranked]
    hits = np.cumsum([s in planted for s in order])
    n = len(planted)
    flagged = [r["sha256"] for r in ranked if "label_issue" in r["flags"]]
    found = sum(s in planted for s in flagged)
    at_80 = int(np.searchsorted(hits, int(np.ceil(0.8 * n)))) + 1
    return [
        (f"{label}: recall in the top {2 * n}", f"{hits[2 * n - 1] / n:.2f}", "target >= 0.8"),
        (f"{label}: precision in the top {n}", f"{hits[n - 1] / n:.2f}", "target >= 0.5"),
        (f"{label}: suspects read for 80% recall", str(at_80),
         f"precision there {hits[at_80 - 1] / at_80:.2f}"),
        (f"{label}: label_issue flag", f"{len(flagged)} flagged",
         f"recall {found / n:.2f}, precision {found / max(len(flagged), 1):.2f}"),
    ]


def dev_rows(dev: Path) -> list[Row]:
    from pipeline.config.params import load_params
    from pipeline.contracts.predictions import write_oof
    from pipeline.stages.suspects import gather, suspects

    params = load_params(REPO / "params.yaml")
    seed = dev / f"seed-{params.split.seed}"
    folds = sorted((dev / "cv").glob("crossval-*/fold-1/scores.json"), key=lambda p: p.stat().st_mtime)
    results = [json.loads(p.read_text()) for p in sorted(folds[0].parent.parent.glob("fold-*/scores.json"))]
    meta = json.loads((seed / "records" / "meta.json").read_text())
    write_oof(dev / "oof.csv", results, meta["class_names"])
    evidence = gather(dev / "clean" / "images.jsonl", seed / "split" / "split.jsonl",
                      seed / "records" / "meta.json", dev / "oof.csv",
                      seed / "evaluate" / "predictions.csv")
    started = time.perf_counter()
    report = suspects(evidence, dev / "raw", dev / "suspects", params.suspects, params.faces,
                      params.evaluate.threshold)
    seconds = time.perf_counter() - started
    ranked = [json.loads(line) for line in (dev / "suspects" / "suspects.jsonl").open()]
    sheet = REPO / "reports" / "bench" / "suspects-dev.png"
    _contact_sheet(dev / "raw", ranked, meta["class_names"], sheet)
    rows = [(f"dev: {flag}", str(sum(counts.values())), json.dumps(counts))
            for flag, counts in report["flags"].items()]
    rows.append(("dev: suspects stage", f"{seconds:.1f} s", f"{report['images']} kept images "
                 f"(face detection most of it); top 40 per class in {sheet}"))
    return rows


def _contact_sheet(raw: Path, ranked: list[dict], classes: list[str], path: Path) -> None:
    from PIL import Image, ImageDraw

    cell, per_row = 96, 10
    canvas = Image.new("RGB", (per_row * cell, 2 * 4 * (cell + 14) + 40), "white")
    draw = ImageDraw.Draw(canvas)
    for band, name in enumerate(classes):
        top = band * (4 * (cell + 14) + 20)
        draw.text((4, top + 2), f"filed under {name}: top 40 suspects", fill="black")
        for n, row in enumerate([r for r in ranked if r["class"] == name][:40]):
            x, y = (n % per_row) * cell, top + 16 + (n // per_row) * (cell + 14)
            with Image.open(raw / row["file"]) as img:
                thumb = img.convert("RGB")
                thumb.thumbnail((cell - 4, cell - 4))
            canvas.paste(thumb, (x + 2, y))
            draw.text((x + 2, y + cell - 4), f"{n + 1} {''.join(f[0] for f in row['flags'])}",
                      fill="red")
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def page_rows(work: Path, images: int = 10_000) -> list[Row]:
    """The review page over ``images`` stored images: each a small distinct JPEG."""
    import threading
    import urllib.request

    from PIL import Image

    from pipeline.review.server import load_store, serve

    rng = np.random.default_rng(0)
    rows = []
    for n in range(images):
        label = ("happy", "sad")[n % 2]
        data = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
        path = work / "raw" / label / f"{n:064x}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(data).resize((320, 320)).save(path, quality=85)
        rows.append({"file": f"{label}/{n:064x}.jpg", "label": label, "sha256": f"{n:064x}",
                     "group": f"{n:064x}", "group_size": 1})
    (work / "clean").mkdir()
    (work / "clean" / "images.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    started = time.perf_counter()
    store = load_store(work / "clean", work / "raw", work / "none", work / "decisions.jsonl")
    loaded = time.perf_counter() - started
    server = serve(store, 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"

    def get(path: str) -> tuple[float, bytes]:
        began = time.perf_counter()
        with urllib.request.urlopen(url + path, timeout=60) as answer:
            body = answer.read()
        return time.perf_counter() - began, body

    page_s, _ = get("/")
    items_s, body = get("/api/items?page=2&per_page=60")
    thumbs_s = sum(get(f"/thumb/{i['sha256']}")[0] for i in json.loads(body)["items"])
    store.thumbs.clear()
    browser = _browser_render(url)
    server.shutdown()
    return [*browser,
            ("review page: index of 10,000 images", f"{loaded * 1000:.0f} ms", "load_store at start"),
            ("review page: the page", f"{page_s * 1000:.0f} ms", "GET /"),
            ("review page: one page of items", f"{items_s * 1000:.0f} ms", "GET /api/items, 60 of 10,000"),
            ("review page: 60 thumbnails, cold", f"{thumbs_s * 1000:.0f} ms",
             "one after another (a browser fetches 6 at once)")]


def _browser_render(url: str) -> list[Row]:
    """Headless Chromium: until the first page of the grid is drawn, and its thumbnails loaded."""
    try:
        from testing.browser import browser as _browser

        browser = _browser()
    except Exception:  # noqa: BLE001 - no browser here: the HTTP figures stand alone
        return []
    try:
        started = time.perf_counter()
        browser.get(url + "/")
        while not browser.execute_script("return document.body.dataset.loaded"):
            time.sleep(0.01)
        drawn = time.perf_counter() - started
        visible = ("return [...document.images].filter(i => i.getBoundingClientRect().top < "
                   "innerHeight).every(i => i.complete && i.naturalWidth > 0)")
        while not browser.execute_script(visible) and time.perf_counter() - started < 120:
            time.sleep(0.01)
        loaded = time.perf_counter() - started
    finally:
        browser.quit()
    return [("review page in Chromium: grid drawn", f"{drawn * 1000:.0f} ms",
             "from navigation to the first 60 cards (10,000 in the store)"),
            ("review page in Chromium: thumbnails", f"{loaded * 1000:.0f} ms",
             "from navigation to every thumbnail in the window loaded (cold; the rest load lazily)")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.suspects", description=__doc__.splitlines()[0])
    parser.add_argument("--demo", action="store_true", help="the whole DAG twice on the demo site")
    parser.add_argument("--dev-work", type=Path, help="bench.crossval's --work folder")
    parser.add_argument("--page", action="store_true", help="the review page on 10,000 images")
    parser.add_argument("--folds", type=int, default=5, help="--demo: crossval folds")
    parser.add_argument("--images-per-class", type=int, help="--demo: a smaller demo site")
    parser.add_argument("--work", type=Path, help="--demo: keep the project here and reuse it")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if args.page or not (args.demo or args.dev_work):
            print_table("review page", page_rows(Path(tmp) / "page"))
        if args.dev_work:
            print_table("dev web set: suspects", dev_rows(args.dev_work))
        if args.demo:
            work = args.work or Path(tmp)
            work.mkdir(parents=True, exist_ok=True)
            print_table("demo site: suspects", demo_rows(work, args.folds, args.images_per_class))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
