"""The demo site: deterministic, shortcut-free, and every planted fault is what it claims."""

from __future__ import annotations

import hashlib
import io
import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from demo.server import DemoSiteServer
from demo.site import ensure_site, generate_site
from testing.project import TINY_SITE, demo_site

FAULT_KINDS = {
    "exact_duplicate", "near_duplicate_reencoded", "near_duplicate_resized",
    "near_duplicate_cropped", "cross_class_same_url", "cross_class_copy", "truncated_jpeg",
    "zero_byte", "html_as_jpeg", "non_image", "tiny_thumbnail", "animated_gif", "cmyk_jpeg",
    "png16_alpha", "palette_png_alpha", "exif_rotated", "over_pixel_limit", "http_404",
    "http_500", "redirect", "slow", "robots_disallowed", "offsite",
}


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def by_kind(truth: dict) -> dict[str, list[dict]]:
    kinds: dict[str, list[dict]] = {}
    for image in truth["images"]:
        kinds.setdefault(image["kind"], []).append(image)
    return kinds


def test_same_seed_same_site_other_seed_other_site(tmp_path: Path, tiny_site: Path) -> None:
    again = generate_site(tmp_path / "again", TINY_SITE, workers=1)
    assert tree_digest(tmp_path / "again") == tree_digest(tiny_site)
    assert again["images"] == json.loads((tiny_site / "ground_truth.json").read_text())["images"]
    other = TINY_SITE.model_copy(update={"seed": TINY_SITE.seed + 1})
    generate_site(tmp_path / "other", other, workers=1)
    assert tree_digest(tmp_path / "other") != tree_digest(tiny_site)


def test_ensure_site_reuses_a_matching_site_and_rebuilds_otherwise(tmp_path: Path) -> None:
    site = tmp_path / "site"
    ensure_site(site, TINY_SITE)
    marker = site / "ground_truth.json"
    first = marker.stat().st_mtime_ns
    ensure_site(site, TINY_SITE)
    assert marker.stat().st_mtime_ns == first
    ensure_site(site, TINY_SITE.model_copy(update={"images_per_class": 12}), workers=1)
    faces = [i for i in json.loads(marker.read_text())["images"] if i["kind"] == "face"]
    assert len(faces) == 24


def test_every_fault_is_planted_and_is_what_it_claims(tiny_site: Path) -> None:
    truth = json.loads((tiny_site / "ground_truth.json").read_text())
    kinds = by_kind(truth)
    assert set(kinds) >= FAULT_KINDS
    www = tiny_site / "www"

    def data(kind: str) -> bytes:
        return (www / kinds[kind][0]["url"].lstrip("/")).read_bytes()

    def image(kind: str) -> Image.Image:
        return Image.open(io.BytesIO(data(kind)))

    assert data("zero_byte") == b""
    assert data("html_as_jpeg").lstrip().lower().startswith(b"<!doctype html")
    with pytest.raises(OSError):
        image("truncated_jpeg").load()
    assert max(image("tiny_thumbnail").size) < 32
    assert image("over_pixel_limit").width * image("over_pixel_limit").height > 50_000_000
    assert image("animated_gif").n_frames > 1
    assert image("cmyk_jpeg").mode == "CMYK"
    assert data("png16_alpha")[24:26] == bytes([16, 6])  # IHDR: 16-bit depth, RGBA
    assert image("palette_png_alpha").mode == "P" and "transparency" in image("palette_png_alpha").info
    assert image("exif_rotated").getexif().get(0x0112) == 6
    for kind in ("exact_duplicate", "cross_class_copy"):
        for fault in kinds[kind]:
            original = (www / fault["of"].lstrip("/")).read_bytes()
            assert hashlib.sha256(original).hexdigest() == fault["sha256"]
    same_url = kinds["cross_class_same_url"][0]
    assert {i["label"] for i in truth["images"] if i["url"] == same_url["url"]} == {"happy", "sad"}
    assert not (www / kinds["http_404"][0]["url"].lstrip("/")).exists()
    robots = (www / "robots.txt").read_text()
    assert all(f["url"].startswith(truth["disallowed_prefix"]) for f in kinds["robots_disallowed"])
    assert f"Disallow: {truth['disallowed_prefix']}" in robots


def test_server_serves_routes_as_planted(tiny_site: Path) -> None:
    truth = json.loads((tiny_site / "ground_truth.json").read_text())
    kinds = by_kind(truth)
    with DemoSiteServer(tiny_site) as server:
        def fetch(path: str) -> tuple[int, bytes, str]:
            try:
                with urllib.request.urlopen(server.base_url + path, timeout=5) as resp:
                    return resp.status, resp.read(), resp.url
            except urllib.error.HTTPError as err:
                return err.code, b"", path

        assert fetch(kinds["http_404"][0]["url"])[0] == 404
        assert fetch(kinds["http_500"][0]["url"])[0] == 500
        status, body, final = fetch(kinds["redirect"][0]["url"])
        assert status == 200 and final.endswith(kinds["redirect"][0]["of"])
        assert hashlib.sha256(body).hexdigest() == kinds["redirect"][0]["sha256"]
        assert fetch("/search/happy/1.html")[0] == 200
    assert server.requests[0] == kinds["http_404"][0]["url"]


def _cheap_features(data: bytes) -> list[float]:
    """What a lazy classifier could use: size, format, colours, brightness, background."""
    img = Image.open(io.BytesIO(data))
    fmt_png = float(img.format == "PNG")
    rgb = np.asarray(img.convert("RGB"), dtype=np.float32)
    border = np.concatenate([rgb[:4].reshape(-1, 3), rgb[-4:].reshape(-1, 3),
                             rgb[:, :4].reshape(-1, 3), rgb[:, -4:].reshape(-1, 3)])
    grey = rgb.mean(axis=2)
    return [len(data), img.width, img.height, img.width / img.height, fmt_png,
            *rgb.reshape(-1, 3).mean(0), *rgb.reshape(-1, 3).std(0), grey.mean(), grey.std(),
            *border.mean(0), float(np.abs(np.diff(grey, axis=1)).mean())]


def _cv_accuracy(x: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0) -> float:
    """Cross-validated accuracy of L2 logistic regression (plain numpy gradient descent)."""
    order = np.random.default_rng(seed).permutation(len(y))
    correct = 0
    for fold in np.array_split(order, folds):
        train = np.setdiff1d(order, fold)
        mean, std = x[train].mean(0), x[train].std(0) + 1e-9
        xt, xv = (x[train] - mean) / std, (x[fold] - mean) / std
        w, b = np.zeros(x.shape[1]), 0.0
        for _ in range(500):
            p = 1 / (1 + np.exp(-(xt @ w + b)))
            w -= 0.1 * (xt.T @ (p - y[train]) / len(train) + 1e-3 * w)
            b -= 0.1 * float((p - y[train]).mean())
        correct += int(((xv @ w + b > 0) == y[fold]).sum())
    return correct / len(y)


def test_no_cheap_feature_predicts_the_label(tmp_path: Path) -> None:
    config = demo_site(seed=3, images_per_class=150)
    truth = generate_site(tmp_path / "site", config, workers=2)
    faces = [i for i in truth["images"] if i["kind"] == "face"]
    x = np.array([_cheap_features((tmp_path / "site" / "www" / i["url"].lstrip("/")).read_bytes())
                  for i in faces])
    y = np.array([i["label"] == "happy" for i in faces], dtype=float)
    assert _cv_accuracy(x, y) < 0.62
    for column in range(x.shape[1]):  # no single feature either
        assert _cv_accuracy(x[:, [column]], y) < 0.62, f"feature {column} leaks the label"
    # The check itself can see a leak when there is one.
    leaky = np.column_stack([x, y + np.random.default_rng(1).normal(0, 0.5, len(y))])
    assert _cv_accuracy(leaky, y) > 0.8
