"""Decoding an image to pixels, in one place: the annotate stages, recaption, the emitted shards, the
report's thumbnails and the trainers all see the same picture of an image.

:func:`decode` (bytes or a path) and :func:`to_rgb` (an opened Pillow image) give 8-bit RGB:

- the first frame (animated GIF, WebP, APNG; multi-page TIFF);
- EXIF orientation applied: the displayed image, as a browser shows it;
- 16-bit images scaled to 8 bits (÷257); 32-bit integer and float images, which declare no range,
  stretched from their min..max (Pillow's own conversion clips both);
- palette, grey, CMYK, YCbCr, ... converted to RGB; alpha (RGBA, LA, PA, or a palette, grey or RGB
  image with a transparent colour) composited on white;
- the decompression-bomb guard: an image that would decode to more than ``max_pixels`` is refused
  (:class:`TooLarge`) from its header, before any pixel is decoded;
- optionally a reduced decode for thumbnails (``fit``): a JPEG decodes at 1/2 to 1/8 scale (Pillow's
  ``draft``) and the guard applies to the pixels actually decoded; other formats have no cheap
  reduced decode, so they decode whole (guarded) and then shrink.

Emitted shards keep a JPEG source's bytes untouched, its EXIF orientation tag included. curate's own
loaders (``curate.train``) decode shards with this function, so training sees the displayed image,
the picture that CLIP scored; a reader that ignores EXIF (e.g. webdataset's ``"pilrgb"``) sees such a
JPEG as stored.
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

MAX_DECODE_PIXELS = 100_000_000
"""Default decode limit (the image stage's ``max_decode_pixels`` default)."""
WHITE = (255, 255, 255)
EXIF_ORIENTATION = 0x0112
SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")


class TooLarge(ValueError):
    """The image would decode to more pixels than the limit allows."""


def open_image(source: bytes | str | Path) -> Image.Image:
    """Pillow's lazy open (header only) of encoded bytes or a file; our limit decides, not Pillow's warning.

    Pillow still refuses more than ``2 * Image.MAX_IMAGE_PIXELS`` (``DecompressionBombError``).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(source) if isinstance(source, bytes | bytearray | memoryview) else source)


def decode(
    source: bytes | str | Path, max_pixels: int | None = MAX_DECODE_PIXELS, fit: int | None = None
) -> Image.Image:
    """The displayed first frame of an encoded image as 8-bit RGB, alpha on white (see the module docstring).

    Raises :class:`TooLarge` past ``max_pixels`` (None: Pillow's own limit only), and Pillow's errors
    (``OSError``, ``ValueError``, ...) for bytes that are not a readable image.
    """
    im = open_image(source)
    out = im
    try:
        out = to_rgb(im, max_pixels, fit)
        return out
    finally:
        if out is not im:
            im.close()


def to_rgb(im: Image.Image, max_pixels: int | None = MAX_DECODE_PIXELS, fit: int | None = None) -> Image.Image:
    """:func:`decode` for an opened image (lazy or loaded); an RGB image it already gave comes back as is.

    With ``fit``, the result fits in ``fit`` x ``fit`` pixels.
    """
    im.seek(0)
    if fit:
        im.draft("RGB", (fit, fit))  # JPEG: decode at a reduced scale; other formats: no effect
    check_size(im, max_pixels)
    im.load()
    out = _rgb_on_white(_to_8bit(_displayed(im)))
    if fit:
        out.thumbnail((fit, fit))
    return out


def check_size(im: Image.Image, max_pixels: int | None) -> None:
    """Raise :class:`TooLarge` when ``im`` would decode to more than ``max_pixels`` pixels."""
    width, height = im.size
    if max_pixels is not None and width * height > max_pixels:
        raise TooLarge(f"declared size {width}x{height} exceeds max_decode_pixels ({max_pixels})")


def _displayed(im: Image.Image) -> Image.Image:
    """``im`` turned as its EXIF orientation says (a new image), or ``im`` itself."""
    if im.getexif().get(EXIF_ORIENTATION) in range(2, 9):
        return ImageOps.exif_transpose(im)
    return im


def _to_8bit(im: Image.Image) -> Image.Image:
    """16-bit images scaled to 8 bits; 32-bit and float images stretched from their min..max."""
    if im.mode in SIXTEEN_BIT:
        values = np.asarray(im).astype(np.uint32)
        return Image.fromarray(((values + 128) // 257).astype(np.uint8), mode="L")
    if im.mode not in ("I", "F"):
        return im
    values = np.asarray(im, dtype=np.float64)
    low, high = float(values.min()), float(values.max())
    scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
    return Image.fromarray(scaled.astype(np.uint8), mode="L")


def _rgb_on_white(im: Image.Image) -> Image.Image:
    """RGB; any alpha channel or transparent colour composited on white."""
    if not im.has_transparency_data:
        return im if im.mode == "RGB" else im.convert("RGB")
    rgba = im.convert("RGBA")
    out = Image.new("RGB", rgba.size, WHITE)
    out.paste(rgba, mask=rgba.getchannel("A"))
    return out


_BUFFER_REPR = re.compile(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>")


def error_text(err: Exception) -> str:
    """``Type: message`` of a decode error, without Pillow's ``<_io.BytesIO object at 0x…>`` (it differs per run)."""
    return _BUFFER_REPR.sub("the downloaded bytes", f"{type(err).__name__}: {err}")[:300]


COLOUR_GRID = 8
"""Side of the colour signature's thumbnail: COLOUR_GRID x COLOUR_GRID cells of mean CIELAB colour
(``benchmarks/verify_dedup.py`` measured 4, 6 and 8; the docstring of :func:`colour_signature` says why 8)."""
COLOUR_SIG_LENGTH = COLOUR_GRID * COLOUR_GRID * 3
_SRGB_TO_XYZ = np.array(
    [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]]
)
_WHITE_D65 = np.array([0.95047, 1.0, 1.08883])


def colour_signature(im: Image.Image, grid: int = COLOUR_GRID) -> np.ndarray:
    """The image's colour and coarse layout: a COLOUR_GRID² thumbnail (area means, any aspect squeezed
    to a square) in CIELAB, float32 of length COLOUR_SIG_LENGTH (L, a, b per cell, row-major; ``grid`` other than COLOUR_GRID is for measurements).

    pHash sees only luminance frequencies, so a red and a green flag hash alike; CIELAB distances
    follow perceived colour difference (ΔE), and the grid keeps where each colour is, so a
    recoloured part of a drawing shows even when the colour histogram hardly moves. ``im`` is the
    RGB image of :func:`to_rgb` (the image stage computes this in the same decode as the pHash).
    """
    rgb = im if im.mode == "RGB" else im.convert("RGB")
    small = rgb.resize((grid, grid), Image.Resampling.BOX, reducing_gap=4.0)
    return srgb_to_lab(np.asarray(small, np.float64).reshape(-1, 3) / 255.0).astype(np.float32).ravel()


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of sRGB values in [0, 1], shape (..., 3)."""
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = linear @ _SRGB_TO_XYZ.T / _WHITE_D65
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def colour_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise distance of colour signatures (n, d) x (n, d) -> (n,): the mean CIELAB ΔE over the worst
    quarter of the grid's 2 x 2 cell windows, after removing the mean lightness difference (a 1-d pair
    gives a 0-d array).

    Each step was measured in ``benchmarks/verify_dedup.py`` against copies and colour variants of real
    glyphs. The worst quarter: a recoloured part of the picture counts in full, while JPEG noise spread
    thinly does not (a plain mean dilutes a recoloured flag on a large background). The 2 x 2 windows:
    a 1-2 % crop moves edges by a fraction of a cell, which windows average out. The mean lightness:
    a brightness change shifts every cell's L alike, a recolouring changes some cells.
    """
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    grid = round((a.shape[-1] // 3) ** 0.5)
    diff = (a - b).reshape(*a.shape[:-1], grid, grid, 3)
    diff[..., 0] -= diff[..., 0].mean(axis=(-2, -1), keepdims=True)
    windows = (diff[..., 1:, 1:, :] + diff[..., :-1, 1:, :] + diff[..., 1:, :-1, :] + diff[..., :-1, :-1, :]) / 4
    cells = np.linalg.norm(windows.reshape(*a.shape[:-1], -1, 3), axis=-1)
    worst = max(1, cells.shape[-1] // 4)
    return np.sort(cells, axis=-1)[..., -worst:].mean(axis=-1)
