"""Procedural photos of happy and sad faces whose only label signal is the expression.

Every nuisance factor (size, colours, lighting, clutter, noise, pose, accessories,
mouth openness) is drawn from the same distribution for both classes; the label
changes only the sign of the mouth curve and the tilt of the eyebrows' inner ends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

LABELS = ("happy", "sad")

SKIN_TONES = [
    (255, 224, 196), (241, 194, 167), (224, 172, 105), (198, 134, 66),
    (161, 102, 64), (141, 85, 36), (110, 66, 40), (80, 50, 35), (234, 200, 170),
]
HAIR_COLOURS = [
    (20, 16, 14), (60, 40, 25), (110, 75, 40), (170, 130, 80), (220, 190, 130),
    (140, 40, 20), (160, 160, 160), (235, 235, 235), (40, 40, 90),
]


@dataclass(frozen=True)
class FaceStyle:
    """Ranges the generator samples from; the same for both labels."""

    min_side: int = 160
    max_side: int = 320
    jpeg_quality: tuple[int, int] = (55, 95)


def _rand_colour(rng: np.random.Generator, lo: int = 0, hi: int = 256) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(lo, hi, size=3))  # type: ignore[return-value]


def _jitter(colour: tuple[int, int, int], rng: np.random.Generator, amount: int) -> tuple:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)


def _background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A two-colour gradient with random clutter shapes: scenes, not studio backdrops."""
    top, bottom = np.array(_rand_colour(rng)), np.array(_rand_colour(rng))
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (xx / w - 0.5) * math.cos(angle) + (yy / h - 0.5) * math.sin(angle) + 0.5
    t = np.clip(t, 0, 1)[..., None]
    pixels = (top * (1 - t) + bottom * t).astype(np.uint8)
    img = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(img, "RGBA")
    for _ in range(int(rng.integers(0, 8))):
        colour = (*_rand_colour(rng), int(rng.integers(40, 200)))
        x0, y0 = rng.integers(-w // 4, w), rng.integers(-h // 4, h)
        x1, y1 = x0 + rng.integers(8, w // 2 + 9), y0 + rng.integers(8, h // 2 + 9)
        kind = rng.integers(0, 3)
        if kind == 0:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        elif kind == 1:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        else:
            draw.line((x0, y0, x1, y1), fill=colour, width=int(rng.integers(1, 6)))
    return img


def _curve(cx: float, cy: float, half_w: float, bend: float, n: int = 24) -> list[tuple]:
    """Points of a parabola through the two corners; positive bend sags downwards."""
    xs = np.linspace(-1.0, 1.0, n)
    return [(cx + x * half_w, cy + bend * (1 - x * x)) for x in xs]


def _draw_eyes_and_brows(
    draw: ImageDraw.ImageDraw, rng: np.random.Generator, label: str,
    cx: float, cy: float, fw: float, fh: float,
) -> None:
    eye_dx = fw * rng.uniform(0.17, 0.24)
    eye_y = cy - fh * rng.uniform(0.06, 0.14)
    eye_rx, eye_ry = fw * rng.uniform(0.06, 0.1), fh * rng.uniform(0.03, 0.055)
    iris = _rand_colour(rng, 20, 160)
    brow_colour = _jitter(HAIR_COLOURS[int(rng.integers(len(HAIR_COLOURS)))], rng, 15)
    brow_w = max(2, int(fw * rng.uniform(0.02, 0.045)))
    brow_gap = fh * rng.uniform(0.07, 0.11)
    brow_half = eye_rx * rng.uniform(1.1, 1.5)
    # The label's second cue: sad brows rise towards the nose, happy ones are
    # level or dip slightly there. Magnitudes overlap in size, differ in sign.
    lift = fh * rng.uniform(0.025, 0.07)
    inner_lift = lift if label == "sad" else -lift * rng.uniform(0.0, 0.5)
    for side in (-1, 1):
        ex = cx + side * eye_dx
        draw.ellipse((ex - eye_rx, eye_y - eye_ry, ex + eye_rx, eye_y + eye_ry), fill=(250, 250, 250))
        r = min(eye_rx, eye_ry) * rng.uniform(0.7, 0.95)
        draw.ellipse((ex - r, eye_y - r, ex + r, eye_y + r), fill=iris)
        pr = r * 0.45
        draw.ellipse((ex - pr, eye_y - pr, ex + pr, eye_y + pr), fill=(10, 10, 10))
        inner_x, outer_x = ex - side * brow_half, ex + side * brow_half
        by = eye_y - brow_gap
        draw.line((outer_x, by, inner_x, by - inner_lift), fill=brow_colour, width=brow_w)


def _draw_mouth(
    draw: ImageDraw.ImageDraw, rng: np.random.Generator, label: str,
    cx: float, cy: float, fw: float, fh: float,
) -> None:
    half_w = fw * rng.uniform(0.14, 0.26)
    my = cy + fh * rng.uniform(0.2, 0.3)
    bend = fh * rng.uniform(0.07, 0.13) * (1 if label == "happy" else -1)
    lip = _jitter((170, 70, 70), rng, 40)
    width = max(2, int(fh * rng.uniform(0.03, 0.05)))
    upper = _curve(cx, my, half_w, bend)
    openness = rng.uniform(0.0, 1.0)
    if openness > 0.5:
        # An open mouth: the lower lip bends further than the upper one.
        gap = fh * (openness - 0.5) * 0.16
        lower = _curve(cx, my, half_w, bend + math.copysign(gap, bend))
        draw.polygon(upper + lower[::-1], fill=(60, 20, 25))
        if rng.uniform() < 0.5:
            teeth = _curve(cx, my, half_w * 0.8, bend * 0.9)
            draw.line(teeth, fill=(240, 240, 230), width=max(1, width))
        draw.line(lower, fill=lip, width=width)
    draw.line(upper, fill=lip, width=width)


def _draw_hair(draw: ImageDraw.ImageDraw, colour: tuple, style: int, box: tuple) -> None:
    x0, y0, x1, y1 = box
    fh = y1 - y0
    if style == 1:  # short: a cap over the top of the head
        draw.chord((x0 - 4, y0 - 6, x1 + 4, y0 + fh * 0.45), 180, 360, fill=colour)
    elif style == 2:  # long: behind the face, down to the shoulders
        draw.rounded_rectangle((x0 - fh * 0.12, y0 - 8, x1 + fh * 0.12, y1 + fh * 0.2),
                               radius=int(fh * 0.3), fill=colour)
    elif style == 3:  # fringe
        draw.chord((x0, y0 - 4, x1, y0 + fh * 0.3), 180, 360, fill=colour)


def _draw_glasses(draw: ImageDraw.ImageDraw, rng: np.random.Generator,
                  cx: float, cy: float, fw: float, fh: float) -> None:
    colour = _rand_colour(rng, 0, 120)
    dx, ey = fw * 0.2, cy - fh * 0.1
    r = fw * rng.uniform(0.1, 0.14)
    width = max(1, int(fw * 0.015))
    for side in (-1, 1):
        draw.ellipse((cx + side * dx - r, ey - r * 0.8, cx + side * dx + r, ey + r * 0.8),
                     outline=colour, width=width)
    draw.line((cx - dx + r, ey, cx + dx - r, ey), fill=colour, width=width)


def _face_layer(rng: np.random.Generator, label: str, w: int, h: int) -> Image.Image:
    """The head on a transparent layer, later rotated and pasted onto the scene."""
    layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    side = min(w, h)
    fw = side * rng.uniform(0.55, 0.75)
    fh = fw * rng.uniform(1.1, 1.3)
    cx = w / 2 + rng.uniform(-0.18, 0.18) * (w - fw)
    cy = h / 2 + rng.uniform(-0.15, 0.15) * max(h - fh, 0)
    box = (cx - fw / 2, cy - fh / 2, cx + fw / 2, cy + fh / 2)
    hair_colour = _jitter(HAIR_COLOURS[int(rng.integers(len(HAIR_COLOURS)))], rng, 20)
    hair_style = int(rng.integers(0, 4))
    if hair_style == 2:  # long hair hangs behind the head
        _draw_hair(draw, hair_colour, hair_style, box)
    skin = _jitter(SKIN_TONES[int(rng.integers(len(SKIN_TONES)))], rng, 12)
    draw.ellipse(box, fill=skin)
    if hair_style != 2:
        _draw_hair(draw, hair_colour, hair_style, box)
    nose = _jitter(skin, rng, 30)
    draw.line((cx, cy - fh * 0.02, cx + rng.uniform(-0.03, 0.03) * fw, cy + fh * 0.1),
              fill=nose, width=max(1, int(fw * 0.02)))
    _draw_eyes_and_brows(draw, rng, label, cx, cy, fw, fh)
    _draw_mouth(draw, rng, label, cx, cy, fw, fh)
    if rng.uniform() < 0.3:
        _draw_glasses(draw, rng, cx, cy, fw, fh)
    return layer


def _lighting_and_noise(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    pixels = np.asarray(img, dtype=np.float32)
    h, w = pixels.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = (xx / w - 0.5) * math.cos(angle) + (yy / h - 0.5) * math.sin(angle)
    gain = rng.uniform(0.6, 1.3) * (1 + rng.uniform(0, 0.6) * ramp)
    pixels = pixels * gain[..., None] + rng.uniform(-25, 25)
    pixels += rng.normal(0, rng.uniform(0, 9), size=pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def draw_face(rng: np.random.Generator, label: str, style: FaceStyle = FaceStyle()) -> Image.Image:
    """One photo-like RGB image of a face showing ``label`` ("happy" or "sad")."""
    if label not in LABELS:
        raise ValueError(f"unknown label {label!r}: expected one of {LABELS}")
    w = int(rng.integers(style.min_side, style.max_side + 1))
    h = int(rng.integers(style.min_side, style.max_side + 1))
    scene = _background(rng, w, h)
    face = _face_layer(rng, label, w, h)
    face = face.rotate(rng.uniform(-12, 12), resample=Image.Resampling.BICUBIC,
                       center=(w / 2 + rng.uniform(-5, 5), h / 2 + rng.uniform(-5, 5)))
    scene.paste(face, (0, 0), face)
    scene = scene.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.3)))
    return _lighting_and_noise(scene, rng)
