"""How a raw file becomes RGB pixels, or a reason why it cannot: one place for clean,
tfrecords and predict, so they accept and convert exactly the same images."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


@dataclass(frozen=True)
class ImageRules:
    """What an acceptable image is; built from params.yaml's `clean` section."""

    formats: tuple[str, ...] = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "MPO")
    min_side: int = 64
    max_pixels: int = 40_000_000
    aspect_ratio: tuple[float, float] = (0.33, 3.0)
    min_std: float = 6.0


class UnusableImageError(Exception):
    """A file that is not a usable image; ``reason`` is a stable code for reports."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any mode to 8-bit RGB; transparent areas become white, as a browser shows them."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        pixels = np.asarray(img, dtype=np.float64)
        top = pixels.max() or 1.0
        img = Image.fromarray((pixels * (255.0 / max(top, 255.0))).astype(np.uint8), "L")
    if img.mode == "P" or img.mode == "LA" or (img.mode == "L" and "transparency" in img.info):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "RGBa", "La", "PA"):
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img.convert("RGBA")).convert("RGB")
    return img.convert("RGB")


def _decoded_rgb(img: Image.Image) -> Image.Image:
    img.seek(0)  # animated: the first frame
    img.load()
    img = ImageOps.exif_transpose(img) or img
    return _to_rgb(img)


def decode_rgb(data: bytes) -> Image.Image:
    """Upright RGB pixels of an image that the clean stage already accepted."""
    return _decoded_rgb(Image.open(io.BytesIO(data)))


RESIZE_POLICIES = ("pad", "crop", "stretch")


def resize_square(img: Image.Image, size: int, policy: str) -> Image.Image:
    """``size`` x ``size`` RGB: pad (letterbox in black), centre-crop, or stretch."""
    resample = Image.Resampling.BILINEAR
    if policy == "stretch":
        return img.resize((size, size), resample)
    if policy == "crop":
        return ImageOps.fit(img, (size, size), resample)
    if policy == "pad":
        return ImageOps.pad(img, (size, size), resample, color=(0, 0, 0))
    raise ValueError(f"unknown resize policy {policy!r}: expected one of {RESIZE_POLICIES}")


def open_rgb(data: bytes, rules: ImageRules) -> Image.Image:
    """Decode ``data`` fully into an upright RGB image, or raise :class:`UnusableImageError`.

    Size limits are checked from the header before any pixel is decoded, so a
    decompression bomb costs nothing. Animated images give their first frame.
    """
    if not data:
        raise UnusableImageError("empty", "zero bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
        raise UnusableImageError("too_many_pixels", str(err)) from None
    except UnidentifiedImageError:
        head = data[:16].lstrip().lower()
        kind = "HTML" if head.startswith((b"<!doctype", b"<html")) else "unrecognised bytes"
        raise UnusableImageError("not_an_image", kind) from None
    if img.format not in rules.formats:
        raise UnusableImageError("unsupported_format", f"{img.format} is not in clean.formats")
    width, height = img.size
    if width * height > rules.max_pixels:
        raise UnusableImageError("too_many_pixels", f"{width}x{height} exceeds {rules.max_pixels} pixels")
    if min(width, height) < rules.min_side:
        raise UnusableImageError("too_small", f"{width}x{height} is under {rules.min_side} px")
    aspect = width / height
    if not rules.aspect_ratio[0] <= aspect <= rules.aspect_ratio[1]:
        raise UnusableImageError("bad_aspect_ratio", f"{width}x{height} (aspect {aspect:.2f})")
    try:
        rgb = _decoded_rgb(img)
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise UnusableImageError("corrupt", str(err) or type(err).__name__) from None
    spread = float(np.asarray(rgb.convert("L"), dtype=np.float32).std())
    if spread < rules.min_std:
        raise UnusableImageError("blank", f"grey-level std {spread:.1f} < {rules.min_std}")
    return rgb
