"""How a raw file becomes RGB pixels, or a reason why it cannot: one place for clean,
tfrecords and predict, so they accept and convert exactly the same images."""

from __future__ import annotations

import io
import math
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.runtime.errors import UserError

if TYPE_CHECKING:  # annotations only: no runtime dependency on the schema
    from pipeline.config.clean import ImageRules


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
    return img if img.mode == "RGB" else img.convert("RGB")


def _decoded_rgb(img: Image.Image) -> Image.Image:
    img.seek(0)  # animated: the first frame
    img.load()
    ImageOps.exif_transpose(img, in_place=True)
    return _to_rgb(img)


def decode_rgb(data: bytes, square: tuple[int, str] | None = None) -> Image.Image:
    """Upright RGB pixels of an image that the clean stage already accepted.

    With ``square=(size, policy)`` a JPEG is decoded straight at the smallest DCT
    scale (1/2, 1/4, 1/8) that still leaves every pixel :func:`resize_square` needs:
    a 2000 px photo bound for 256 px costs a sixteenth of a full decode.
    """
    img = Image.open(io.BytesIO(data))
    if square is not None and img.format == "JPEG":
        size, policy = square
        width, height = img.size
        scale = {"pad": size / max(width, height), "crop": size / min(width, height)}.get(policy)
        wanted = (size, size) if scale is None else (math.ceil(width * scale), math.ceil(height * scale))
        img.draft("RGB", wanted)
    return _decoded_rgb(img)


RESIZE_POLICIES = ("pad", "crop", "stretch")
ENCODINGS = ("jpeg", "png")


_OPENCV_IMPORT = threading.Lock()


def opencv() -> ModuleType:
    """OpenCV, imported where pixels are resized, encoded or searched for faces (clean's
    workers never load it), under a lock: its import swaps modules in ``sys.modules``, and a
    thread that imports it meanwhile (serve-model's request threads) gets a half-made module
    with no ``cv2.data``."""
    with _OPENCV_IMPORT:
        import cv2
    return cv2


def _resized(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """Area averaging when shrinking 2x or more (where bilinear would alias), else bilinear.

    JPEGs arrive here already DCT-scaled to within 2x of the target (see decode_rgb).
    """
    shrinking = 2 * width <= pixels.shape[1] and 2 * height <= pixels.shape[0]
    cv2 = opencv()
    return cv2.resize(pixels, (width, height),
                      interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def resize_square(img: Image.Image | np.ndarray, size: int, policy: str) -> np.ndarray:
    """``size`` x ``size`` x 3 uint8 RGB: pad (letterbox in black), centre-crop, or stretch."""
    if policy not in RESIZE_POLICIES:
        raise ValueError(f"unknown resize policy {policy!r}: expected one of {RESIZE_POLICIES}")
    pixels = img if isinstance(img, np.ndarray) else np.asarray(
        img if img.mode == "RGB" else img.convert("RGB"))
    height, width = pixels.shape[:2]
    if policy == "stretch":
        return _resized(pixels, size, size)
    if policy == "crop":
        side = min(width, height)
        top, left = (height - side) // 2, (width - side) // 2
        return _resized(pixels[top:top + side, left:left + side], size, size)
    scale = size / max(width, height)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    canvas = np.zeros((size, size, 3), np.uint8)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    canvas[top:top + new_h, left:left + new_w] = _resized(pixels, new_w, new_h)
    return canvas


# A face crop (pipeline.vision.faces.FaceCrop): the region to keep of an image, or None for none found.
Crop = Callable[[np.ndarray], "np.ndarray | None"]


def model_view(data: bytes, size: int, policy: str, threads: int | None = None,
               crop: Crop | None = None) -> tuple[np.ndarray, bool | None]:
    """The model's view of an accepted image, and whether ``crop`` found a face (None: no
    crop asked). The one conversion tfrecords and predict share.

    ``threads=1`` in worker processes, whose parallelism is the processes themselves.
    """
    views = model_views(data, size, policy, threads, crop)
    return views.pixels, views.face_found


@dataclass(frozen=True)
class Views:
    """What a model sees of one image: ``pixels`` (size x size), ``face`` (a two-view model's
    face view, black when none was found; else None) and ``face_found`` (None: no detector)."""

    pixels: np.ndarray
    face: np.ndarray | None
    face_found: bool | None


def stacked(views: list[Views]) -> np.ndarray | dict[str, np.ndarray]:
    """A batch of views as the model takes it: the pixels, or a two-view model's inputs."""
    from pipeline.contracts.features import FACE_FOUND_INPUT, FACE_INPUT, PIXELS_INPUT

    pixels = np.stack([v.pixels for v in views])
    if views[0].face is None:
        return pixels
    return {PIXELS_INPUT: pixels, FACE_INPUT: np.stack([v.face for v in views]),
            FACE_FOUND_INPUT: np.array([[float(bool(v.face_found))] for v in views], np.float32)}


def model_views(data: bytes, size: int, policy: str, threads: int | None = None,
                crop: Crop | None = None, face_size: int = 0) -> Views:
    """The model's views of an accepted image: with ``face_size`` (a two-view model) the whole
    picture at ``size`` and the face ``crop`` finds at ``face_size``; without, the face (when
    ``crop`` finds one) or the whole picture at ``size``. The one conversion tfrecords,
    predict and promotion share."""
    if threads is not None:
        opencv().setNumThreads(threads)
    if crop is None:
        return Views(resize_square(decode_rgb(data, (size, policy)), size, policy), None, None)
    # The face's size is not known yet: a JPEG is DCT-scaled only down to 4x the output on its
    # shorter side, so a face a quarter of it still has every pixel (and a 24 MP photo costs
    # a quarter of the memory)
    pixels = np.asarray(decode_rgb(data, (4 * max(size, face_size), "crop")))
    face = crop(pixels)
    if not face_size:
        return Views(resize_square(pixels if face is None else face, size, policy), None,
                     face is not None)
    face_view = (np.zeros((face_size, face_size, 3), np.uint8) if face is None
                 else resize_square(face, face_size, policy))
    return Views(resize_square(pixels, size, policy), face_view, face is not None)


def square_rgb(data: bytes, size: int, policy: str, threads: int | None = None,
               crop: Crop | None = None) -> np.ndarray:
    """The model's view of an accepted image (:func:`model_view` without the face flag)."""
    return model_view(data, size, policy, threads, crop)[0]


@dataclass(frozen=True)
class SquareJob:
    """One image for :func:`encoded_square`: where it is and what the records want."""

    path: Path
    size: int
    policy: str
    encoding: str
    quality: int
    crop: Crop | None = None
    face_size: int = 0  # a two-view model's face view; 0: none


def encoded_square(job: SquareJob) -> tuple[bytes, bool | None, bytes | None]:
    """The encoded square a TFRecord holds, from a file the clean stage accepted, whether a
    face was found (None: no crop asked), and the encoded face view (None: not asked).

    Raises a one-line UserError naming the file. Runs in worker processes, which is
    why it lives here: unpickling it imports this light module, not a stage's.
    """
    try:
        data = job.path.read_bytes()
    except OSError as err:
        raise UserError(f"{job.path}: cannot read ({err.strerror or err}); restore data/raw "
                        "with `dvc checkout` or rerun the scrape stage") from None
    try:
        views = model_views(data, job.size, job.policy, threads=1, crop=job.crop,
                            face_size=job.face_size)
    except (OSError, SyntaxError, ValueError) as err:
        raise UserError(f"{job.path}: no longer decodes ({err}); rerun the clean stage") from None
    face = None if views.face is None else encode(views.face, job.encoding, job.quality)
    return encode(views.pixels, job.encoding, job.quality), views.face_found, face


def encode(pixels: np.ndarray, encoding: str, jpeg_quality: int = 95) -> bytes:
    """RGB uint8 pixels as JPEG or PNG bytes (deterministic: same pixels, same bytes)."""
    cv2 = opencv()
    bgr = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    if encoding == "jpeg":
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
    elif encoding == "png":
        ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 6])
    else:
        raise ValueError(f"unknown encoding {encoding!r}: expected one of {ENCODINGS}")
    if not ok:
        raise ValueError(f"OpenCV could not encode a {pixels.shape} image as {encoding}")
    return buf.tobytes()


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
