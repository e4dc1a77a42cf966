"""Near-duplicate copies of an image, as reposts make them: a re-encode, a resize, a small crop, a
corner watermark, a small brightness change. ``curate calibrate`` uses them as known duplicates of
a run's own images; ``benchmarks/quality_corpus.py`` plants them in its pool.
"""

from __future__ import annotations

import io
import random

from PIL import Image, ImageDraw, ImageEnhance, ImageFont

PERTURBATIONS = ("jpeg", "resize", "crop", "overlay", "brightness", "resize_jpeg")
"""The kinds of copy :func:`perturb` makes."""
WATERMARKS = ("© stock", "sample", "preview", "emojis.example.com", "@icons", "free download")
MIN_SIDE = 210
"""A resized copy keeps its smaller side at least this (10 px above DataComp's 200 px image_size policy,
so copies reach the dedup policies); smaller images are not downscaled."""


def perturb(img: Image.Image, kind: str, rng: random.Random, min_side: int = MIN_SIDE) -> Image.Image:
    """A near-duplicate of ``img`` (one of :data:`PERTURBATIONS`): never larger; a resize keeps the smaller
    side >= ``min_side``; a crop takes 0.5-2 % a side; brightness changes by 5-12 %."""
    w, h = img.size
    if kind in ("resize", "resize_jpeg"):
        f = max(rng.uniform(0.6, 0.9), min_side / min(w, h))
        return img.resize((round(w * f), round(h * f)), Image.Resampling.LANCZOS) if f < 1 else img.copy()
    if kind == "crop":
        left, top, right, bottom = (rng.uniform(0.005, 0.02) for _ in range(4))
        return img.crop((round(left * w), round(top * h), w - round(right * w), h - round(bottom * h)))
    if kind == "overlay":
        return _watermark(img, rng)
    if kind == "brightness":
        return ImageEnhance.Brightness(img).enhance(rng.choice((rng.uniform(0.88, 0.95), rng.uniform(1.05, 1.12))))
    if kind != "jpeg":
        raise ValueError(f"unknown perturbation {kind!r}: use one of {', '.join(PERTURBATIONS)}")
    return img.copy()  # "jpeg": the same pixels, re-encoded by near_copy_bytes


def _watermark(img: Image.Image, rng: random.Random) -> Image.Image:
    """``img`` with a short white, black-outlined text in its bottom-right corner (h/20 px)."""
    w, h = img.size
    out = img.copy()
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default(size=max(10, h // 20))
    text = rng.choice(WATERMARKS)
    box = draw.textbbox((0, 0), text, font=font)
    x, y = w - (box[2] - box[0]) - w // 40, h - (box[3] - box[1]) - h // 30
    draw.text((x, y), text, font=font, fill=(255, 255, 255), stroke_width=1, stroke_fill=(0, 0, 0))
    return out


def near_copy_bytes(img: Image.Image, kind: str, rng: random.Random, min_side: int = MIN_SIDE) -> bytes:
    """The perturbed copy of an RGB image as JPEG: q25-50 for "jpeg"/"resize_jpeg", else q75-90 (a repost's re-encode)."""
    quality = rng.randint(25, 50) if kind in ("jpeg", "resize_jpeg") else rng.randint(75, 90)
    buf = io.BytesIO()
    perturb(img, kind, rng, min_side).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
