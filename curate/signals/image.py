"""Image signals measured on the image as served: size, shape, format, bytes, frames, decode status."""

from __future__ import annotations

import pyarrow as pa
from PIL import Image
from pydantic import Field

from curate.images import MAX_DECODE_PIXELS, colour_signature, error_text, open_image, to_rgb
from curate.stage import Stage, StageConfig, append_columns

EXIF_ORIENTATION = 0x0112
ROTATED = {5, 6, 7, 8}  # EXIF orientations that swap width and height when displayed
EXIF_IN_HEADER = (
    "JPEG",
    "MPO",
    "TIFF",
    "WEBP",
)  # PNG keeps EXIF after the pixels: reading it decodes


class ImageConfig(StageConfig):
    max_decode_pixels: int = Field(
        MAX_DECODE_PIXELS,
        gt=0,
        le=2 * Image.MAX_IMAGE_PIXELS,
        description="Images whose header declares more pixels are not decoded (decompression "
        "bomb guard) and get a decode_error. Pillow refuses more than 2 * MAX_IMAGE_PIXELS anyway.",
    )
    dhash: bool = Field(False, description="Also compute the 64-bit difference hash (dhash).")


class ImageSignals(Stage):
    """Decode each image once with Pillow and record what it is.

    ``width``/``height`` are the displayed size (EXIF orientation applied) of the image as served.
    When acquire downscaled it (``acquire.max_side``), they are img2dataset's ``original_width``/
    ``original_height`` (optional reads: without them, e.g. on WebDataset rows with no ``json``, the size is
    the decoded image's); ``bytes`` and ``format`` always describe the stored file.
    """

    name = "image"
    Config = ImageConfig
    reads = ("image",)
    optional_reads = ("original_width", "original_height")  # img2dataset's; else measured on the image
    writes = {
        "width": pa.int32(),
        "height": pa.int32(),
        "pixels": pa.int64(),
        "aspect": pa.float32(),
        "format": pa.string(),
        "bytes": pa.int64(),
        "frames": pa.int32(),
        "animated": pa.bool_(),
        "exif_orientation": pa.int8(),
        "phash": pa.uint64(),
        "dhash": pa.uint64(),
        "colour_sig": pa.list_(pa.float32()),
        "decode_error": pa.string(),
    }

    def process(self, batch: pa.Table) -> pa.Table:
        cols: dict[str, list] = {name: [] for name in self.writes}
        originals = zip(_column(batch, "original_width"), _column(batch, "original_height"), strict=True)
        for data, original in zip(batch.column("image").to_pylist(), originals, strict=True):
            row = measure_image(data, self.config.max_decode_pixels, original, self.config.dhash)
            for name in self.writes:
                cols[name].append(row.get(name))
        return append_columns(batch, cols, self.writes)


def _column(batch: pa.Table, name: str) -> list:
    """An optional column's values, all None when the batch lacks it."""
    return batch.column(name).to_pylist() if name in batch.column_names else [None] * len(batch)


def measure_image(
    data: bytes | None, max_decode_pixels: int, original: tuple | None = None, with_dhash: bool = False
) -> dict:
    """The signals of one encoded image; ``decode_error`` is None when it decoded fully."""
    row: dict = {"decode_error": None}
    if data is None:
        return row
    row["bytes"] = len(data)
    try:
        with open_image(data) as im:
            row.update(_header(im, original))
            if row["pixels"] > max_decode_pixels:
                row["decode_error"] = f"declared size {im.size[0]}x{im.size[1]} exceeds max_decode_pixels"
                return row
            shown = to_rgb(im, max_decode_pixels)
            row.update(perceptual_hashes(shown, with_dhash))
            row["colour_sig"] = colour_signature(shown).tolist()  # near_dedup's check of pHash pairs
    except Exception as err:  # a per-row error is data, not a crash: it becomes decode_error
        row["decode_error"] = error_text(err)
    return row


def _header(im: Image.Image, original: tuple | None) -> dict:
    """What the header tells without decoding pixels."""
    width, height = im.size
    orientation = im.getexif().get(EXIF_ORIENTATION) if im.format in EXIF_IN_HEADER else None
    if orientation in ROTATED:
        width, height = height, width
    if original and original[0] and original[1]:
        width, height = original
    frames = getattr(im, "n_frames", 1)
    return {
        "format": (im.format or "").lower() or None,
        "width": width,
        "height": height,
        "pixels": width * height,
        "aspect": max(width, height) / max(1, min(width, height)),
        "frames": frames,
        "animated": bool(getattr(im, "is_animated", False)),
        "exif_orientation": orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else None,
    }


def perceptual_hashes(im: Image.Image, with_dhash: bool) -> dict:
    """64-bit pHash (and dHash) of the image as :func:`curate.images.to_rgb` shows it (first frame, EXIF
    orientation applied, alpha on white: the picture CLIP scores and the shards hold), as unsigned ints.

    Given that RGB image (as the stage does), it is not decoded again.
    """
    import imagehash

    shown = to_rgb(im, max_pixels=None)
    hashes = {"phash": _as_int(imagehash.phash(shown))}
    if with_dhash:
        hashes["dhash"] = _as_int(imagehash.dhash(shown))
    return hashes


def _as_int(value) -> int:
    return int("".join("1" if bit else "0" for bit in value.hash.flatten()), 2)
