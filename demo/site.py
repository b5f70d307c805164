"""Builds the bundled demo image-search site: faces, result pages, and every planted fault.

The site lives in one folder: ``www/`` is what the server serves, ``routes.json``
tells the server which paths misbehave (500, redirect, slow), ``ground_truth.json``
lists every image and every planted fault with what each stage must make of it,
and ``site.json`` records the parameters it was built from.
"""

from __future__ import annotations

import hashlib
import html
import io
import json
import logging
import os
import shutil
import struct
import zlib
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from demo.faces import LABELS, FaceStyle, draw_face
from pipeline.config.scrape import DemoSiteParams

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 4
DISALLOWED_PREFIX = "/private/"


@dataclass
class SiteImage:
    """One served image (or planted fault) and what the pipeline must make of it."""

    url: str
    label: str
    kind: str = "face"
    fetch: str = "stored"  # stored | error | blocked
    clean: str | None = None  # reason code the clean stage must give, None when kept
    of: str | None = None  # for duplicates and conflicts: the original's url
    sha256: str | None = None
    render: str = "src"  # how a result page shows it: src | lazy | srcset | detail | relative
    true_label: str | None = None  # for a mislabelled face: the class it shows


@dataclass(frozen=True)
class _Built:
    """The encoded bytes of one generated face."""

    data: bytes
    ext: str

    @property
    def image(self) -> Image.Image:
        return Image.open(io.BytesIO(self.data)).convert("RGB")


def _encode(img: Image.Image, rng: np.random.Generator, config: DemoSiteParams) -> tuple[bytes, str]:
    buf = io.BytesIO()
    if rng.uniform() < config.png_fraction:
        img.save(buf, "PNG", optimize=False)
        return buf.getvalue(), "png"
    lo, hi = config.jpeg_quality
    img.save(buf, "JPEG", quality=int(rng.integers(lo, hi + 1)))
    return buf.getvalue(), "jpg"


def _make_face(args: tuple[np.random.SeedSequence, str, DemoSiteParams]) -> tuple[bytes, str]:
    seed, label, config = args
    rng = np.random.default_rng(seed)
    style = FaceStyle(config.min_side, config.max_side, config.jpeg_quality)
    return _encode(draw_face(rng, label, style), rng, config)


def _face_bytes(
    seeds: list[np.random.SeedSequence], labels: list[str], config: DemoSiteParams, workers: int
) -> Iterator[tuple[bytes, str]]:
    """Generate faces in parallel; each has its own seed, so order and workers don't matter."""
    jobs = [(s, lab, config) for s, lab in zip(seeds, labels, strict=True)]
    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(jobs) < 16:
        yield from map(_make_face, jobs)
        return
    with ProcessPoolExecutor(workers) as pool:
        yield from pool.map(_make_face, jobs, chunksize=8)


def _png16_rgba(img: Image.Image) -> bytes:
    """A 16-bit-per-channel RGBA PNG (Pillow cannot write one) with a transparent border."""
    rgba = np.asarray(img.convert("RGBA"), dtype=np.uint16) * 257
    h, w = rgba.shape[:2]
    rgba[: h // 10, :, 3] = 0
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rgba)

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    header = struct.pack(">IIBBBBB", w, h, 16, 6, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def _save(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


class _SiteWriter:
    """Accumulates the files of the site and the ground truth as faults are planted."""

    def __init__(self, www: Path, rng: np.random.Generator) -> None:
        self.www = www
        self.rng = rng
        self.images: list[SiteImage] = []
        self.routes: dict[str, dict[str, object]] = {}

    def new_path(self, folder: str, ext: str) -> str:
        return f"/{folder}/{self.rng.bytes(6).hex()}.{ext}"

    def write(self, url: str, data: bytes) -> str:
        target = self.www / url.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return hashlib.sha256(data).hexdigest()

    def add(self, url: str, data: bytes | None, **kwargs: object) -> SiteImage:
        sha = self.write(url, data) if data is not None else None
        entry = SiteImage(url=url, sha256=sha, **kwargs)  # type: ignore[arg-type]
        self.images.append(entry)
        return entry


def _plant_copies(w: _SiteWriter, faces: dict[str, list[tuple[SiteImage, _Built]]],
                  copies: int) -> None:
    """Copies the clean stage must group: ``copies`` sets per class of an exact and three near
    duplicates, and one picture under both classes (once by the same URL, once as a copy)."""
    for copy in range(copies):
        for label in LABELS:
            # the first set from faces 0-3, later ones after the two cross-class faces (4, 5)
            first = 0 if copy == 0 else 6 + 4 * (copy - 1)
            orig, built = faces[label][first]
            w.add(w.new_path("img", built.ext), built.data, label=label, kind="exact_duplicate",
                  clean="exact_duplicate", of=orig.url)
            orig2, built2 = faces[label][first + 1]
            img = built2.image
            w.add(w.new_path("img", "jpg"), _save(img, "JPEG", quality=40), label=label,
                  kind="near_duplicate_reencoded", clean="near_duplicate", of=orig2.url)
            orig3, built3 = faces[label][first + 2]
            small = built3.image.resize((built3.image.width * 3 // 4, built3.image.height * 3 // 4))
            w.add(w.new_path("img", "jpg"), _save(small, "JPEG", quality=90), label=label,
                  kind="near_duplicate_resized", clean="near_duplicate", of=orig3.url)
            orig4, built4 = faces[label][first + 3]
            iw, ih = built4.image.size
            crop = built4.image.crop((iw // 25, ih // 25, iw - iw // 25, ih - ih // 25))
            w.add(w.new_path("img", "jpg"), _save(crop, "JPEG", quality=90), label=label,
                  kind="near_duplicate_cropped", clean="near_duplicate", of=orig4.url)
    shared = faces["happy"][4][0]
    w.images.append(SiteImage(url=shared.url, label="sad", kind="cross_class_same_url",
                              clean="label_conflict", of=shared.url, sha256=shared.sha256))
    shared.clean = "label_conflict"
    copied, copied_built = faces["happy"][5]
    w.add(w.new_path("img", copied_built.ext), copied_built.data, label="sad",
          kind="cross_class_copy", clean="label_conflict", of=copied.url)
    copied.clean = "label_conflict"


def _plant_mislabels(faces: dict[str, list[tuple[SiteImage, _Built]]], fraction: float) -> None:
    """The last ``fraction`` of each class's faces (never an original of a planted copy, which
    come first) moved to the other class's pages: kept by clean, with the wrong label."""
    for label in LABELS:
        other = LABELS[1 - LABELS.index(label)]
        count = round(fraction * len(faces[label]))
        for entry, _ in faces[label][len(faces[label]) - count:]:
            entry.label, entry.kind, entry.true_label = other, "mislabelled", label


def _plant_unusable(w: _SiteWriter, extra: Iterator[tuple[str, _Built]]) -> None:
    """Files the clean stage must reject, each with its reason code."""
    label, built = next(extra)
    jpeg = _save(built.image, "JPEG", quality=90)
    w.add(w.new_path("img", "jpg"), jpeg[: len(jpeg) * 6 // 10], label=label,
          kind="truncated_jpeg", clean="corrupt")
    w.add(w.new_path("img", "jpg"), b"", label="sad", kind="zero_byte", clean="empty")
    page = b"<!doctype html><html><body><h1>Hotlinking not allowed</h1></body></html>"
    w.add(w.new_path("img", "jpg"), page, label="happy", kind="html_as_jpeg", clean="not_an_image")
    w.add(w.new_path("img", "txt"), b"name,label\nsmile.jpg,happy\n", label="sad",
          kind="non_image", clean="not_an_image")
    label, built = next(extra)
    w.add(w.new_path("img", "jpg"), _save(built.image.resize((24, 24)), "JPEG", quality=90),
          label=label, kind="tiny_thumbnail", clean="too_small")
    w.add(w.new_path("img", "png"), _save(Image.new("1", (9000, 9000), 1), "PNG"),
          label="happy", kind="over_pixel_limit", clean="too_many_pixels")


def _plant_awkward_encodings(w: _SiteWriter, extra: Iterator[tuple[str, _Built]]) -> None:
    """Awkward but valid encodings: the clean stage must keep and convert them."""
    label, built = next(extra)
    first = built.image
    frames = [first, ImageEnhance.Brightness(first).enhance(0.6),
              ImageEnhance.Brightness(first).enhance(1.3)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=200, loop=0)
    w.add(w.new_path("img", "gif"), gif.getvalue(), label=label, kind="animated_gif")
    label, built = next(extra)
    w.add(w.new_path("img", "jpg"), _save(built.image.convert("CMYK"), "JPEG", quality=90),
          label=label, kind="cmyk_jpeg")
    label, built = next(extra)
    w.add(w.new_path("img", "png"), _png16_rgba(built.image), label=label, kind="png16_alpha")
    label, built = next(extra)
    palette = built.image.convert("P", palette=Image.Palette.ADAPTIVE, colors=200)
    w.add(w.new_path("img", "png"), _save(palette, "PNG", transparency=0), label=label,
          kind="palette_png_alpha")
    label, built = next(extra)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: stored rotated, "rotate 90 CW to display"
    sideways = built.image.transpose(Image.Transpose.ROTATE_90)
    w.add(w.new_path("img", "jpg"), _save(sideways, "JPEG", quality=90, exif=exif.tobytes()),
          label=label, kind="exif_rotated")


def _plant_http_faults(w: _SiteWriter, extra: Iterator[tuple[str, _Built]],
                       config: DemoSiteParams) -> None:
    """Faults of the transport: the spider must report, follow or avoid them."""
    w.add(w.new_path("img", "jpg"), None, label="happy", kind="http_404", fetch="error")
    url = w.new_path("img", "jpg")
    w.add(url, None, label="sad", kind="http_500", fetch="error")
    w.routes[url] = {"status": 500}
    label, built = next(extra)
    target = w.new_path("img", built.ext)
    w.write(target, built.data)
    hop = w.new_path("go", "jpg")
    w.images.append(SiteImage(url=hop, label=label, kind="redirect", of=target,
                              sha256=hashlib.sha256(built.data).hexdigest()))
    w.routes[hop] = {"redirect": target}
    label, built = next(extra)
    slow = w.add(w.new_path("img", built.ext), built.data, label=label, kind="slow")
    w.routes[slow.url] = {"delay_s": config.slow_response_s}
    for label in LABELS:
        _, built = next(extra)
        w.add(w.new_path("private", built.ext), built.data, label=label,
              kind="robots_disallowed", fetch="blocked")
    # A hotlinked image on another host: the spider keeps to the configured domains.
    w.images.append(SiteImage(url="http://images.example.net/stock/smile-1.jpg", label="happy",
                              kind="offsite", fetch="blocked"))


def _figure(entry: SiteImage, thumb: str | None) -> str:
    url, alt = html.escape(entry.url), f"photo {entry.url.rsplit('/', 1)[-1].split('.')[0]}"
    inner = {
        "src": f'<img src="{url}" alt="{alt}">',
        "relative": f'<img src="../..{url}" alt="{alt}">',
        "lazy": f'<img class="lazy" src="/static/blank.gif" data-src="{url}" alt="{alt}">',
        "srcset": f'<img src="{thumb}" srcset="{thumb} 120w, {url} 480w" '
                  f'sizes="(max-width: 600px) 120px, 480px" alt="{alt}">',
        "detail": f'<a class="detail" href="/detail/{Path(entry.url).stem}.html">'
                  f'<img class="thumb" src="{thumb}" alt="{alt}"></a>',
    }[entry.render]
    return f'<figure class="result">{inner}<figcaption>{alt}</figcaption></figure>'


def _page(title: str, body: str) -> str:
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><link rel=\"stylesheet\" href=\"/static/site.css\">"
            "</head><body><header><img class=\"logo\" src=\"/static/logo.png\" alt=\"logo\">"
            f"<h1>{html.escape(title)}</h1></header>\n{body}\n"
            "<footer>Synthetic faces, CC0-1.0. Generated by happysad.</footer></body></html>\n")


def _write_pages(w: _SiteWriter, config: DemoSiteParams) -> dict[str, int]:
    """Result pages per class, detail pages and thumbnails; returns the page count per class."""
    pages: dict[str, int] = {}
    for label in LABELS:
        entries = [e for e in w.images if e.label == label]
        order = w.rng.permutation(len(entries))
        entries = [entries[i] for i in order]
        per = config.results_per_page
        chunks = [entries[i:i + per] for i in range(0, len(entries), per)]
        pages[label] = len(chunks)
        for number, chunk in enumerate(chunks, start=1):
            figures = []
            for entry in chunk:
                thumb = None
                if entry.render in ("srcset", "detail"):
                    thumb = f"/thumbs/{Path(entry.url).stem}.jpg"
                    full = Image.open(w.www / entry.url.lstrip("/")).convert("RGB")
                    full.thumbnail((120, 120))
                    w.write(thumb, _save(full, "JPEG", quality=80))
                if entry.render == "detail":
                    detail = _page("Photo", f'<main><img class="full" src="{entry.url}" '
                                            f'alt="full size"></main>')
                    w.write(f"/detail/{Path(entry.url).stem}.html", detail.encode())
                figures.append(_figure(entry, thumb))
            nav = []
            if number > 1:
                nav.append(f'<a rel="prev" href="{number - 1}.html">Previous</a>')
            if number < len(chunks):
                nav.append(f'<a rel="next" href="{number + 1}.html">Next</a>')
            body = (f'<section class="results">{"".join(figures)}</section>'
                    f'<nav class="pager">{" ".join(nav)}</nav>')
            title = f"Images for “{label} person” — page {number}"
            w.write(f"/search/{label}/{number}.html", _page(title, body).encode())
    return pages


def _write_static(w: _SiteWriter, pages: dict[str, int]) -> None:
    w.write("/robots.txt", f"User-agent: *\nDisallow: {DISALLOWED_PREFIX}\n".encode())
    w.write("/static/blank.gif", _save(Image.new("L", (1, 1), 255), "GIF"))
    w.write("/static/logo.png", _save(Image.new("RGB", (64, 24), (40, 90, 200)), "PNG"))
    w.write("/static/site.css", b"figure.result{display:inline-block;margin:4px}"
                                b"figure.result img{max-height:160px}\n")
    links = "".join(f'<li><a href="/search/{lab}/1.html">{lab} person</a> ({n} pages)</li>'
                    for lab, n in pages.items())
    w.write("/index.html", _page("happysad demo image search", f"<ul>{links}</ul>").encode())


def _place_faces(w: _SiteWriter, face_seed: np.random.SeedSequence, config: DemoSiteParams,
                 workers: int) -> tuple[dict[str, list[tuple[SiteImage, _Built]]],
                                        list[tuple[str, _Built]]]:
    """The faces of the result pages, per class, and 12 spare faces for the planted faults."""
    n_extra = 12
    labels = [lab for _ in range(config.images_per_class) for lab in LABELS]
    labels += [LABELS[i % 2] for i in range(n_extra)]
    built_faces = _face_bytes(face_seed.spawn(len(labels)), labels, config, workers)
    faces: dict[str, list[tuple[SiteImage, _Built]]] = {lab: [] for lab in LABELS}
    renders = ("src", "lazy", "srcset", "detail", "relative")
    extras: list[tuple[str, _Built]] = []
    for i, (label, (data, ext)) in enumerate(zip(labels, built_faces, strict=True)):
        built = _Built(data, ext)
        if i >= 2 * config.images_per_class:
            extras.append((label, built))
            continue
        render = renders[int(w.rng.integers(len(renders)))]
        entry = w.add(w.new_path("img", ext), data, label=label, render=render)
        faces[label].append((entry, built))
    return faces, extras


def generate_site(out_dir: Path, config: DemoSiteParams, workers: int = 0) -> dict[str, object]:
    """Write the demo site into ``out_dir`` (replacing it) and return its ground truth;
    faces are drawn by ``workers`` processes (0: one per core)."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    www = tmp / "www"
    www.mkdir(parents=True)
    root = np.random.SeedSequence(config.seed)
    site_seed, face_seed = root.spawn(2)
    w = _SiteWriter(www, np.random.default_rng(site_seed))
    faces, extras = _place_faces(w, face_seed, config, workers)
    extra = iter(extras)
    _plant_copies(w, faces, config.copies_per_class)
    _plant_mislabels(faces, config.mislabelled_fraction)
    _plant_unusable(w, extra)
    _plant_awkward_encodings(w, extra)
    _plant_http_faults(w, extra, config)
    pages = _write_pages(w, config)
    _write_static(w, pages)

    truth = {
        "generator_version": GENERATOR_VERSION,
        "config": config.model_dump(),
        "disallowed_prefix": DISALLOWED_PREFIX,
        "start_paths": {lab: f"/search/{lab}/1.html" for lab in LABELS},
        "pages": pages,
        "images": [asdict(e) for e in w.images],
    }
    (tmp / "ground_truth.json").write_text(json.dumps(truth, indent=1))
    (tmp / "routes.json").write_text(json.dumps(w.routes, indent=1, sort_keys=True))
    (tmp / "site.json").write_text(json.dumps(site_key(config), sort_keys=True))
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    logger.info("demo site: %d images, %d result pages in %s",
                len(w.images), sum(pages.values()), out_dir)
    return truth


def site_key(config: DemoSiteParams) -> dict[str, object]:
    """What identifies a generated site: reuse one on disk only if this matches."""
    key = config.model_dump()
    return {"generator_version": GENERATOR_VERSION, **key}


def ensure_site(out_dir: Path, config: DemoSiteParams, workers: int = 0) -> Path:
    """Generate the site unless ``out_dir`` already holds one built from the same config."""
    marker = Path(out_dir) / "site.json"
    try:
        if json.loads(marker.read_text()) == json.loads(json.dumps(site_key(config))):
            return Path(out_dir)
    except (OSError, ValueError):
        pass
    generate_site(out_dir, config, workers)
    return Path(out_dir)
