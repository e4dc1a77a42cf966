"""Image signals measured on the image as served: size, format, file bytes, decode status."""

from __future__ import annotations

import io
import warnings

import pyarrow as pa
from PIL import Image
from pydantic import Field

from curate.stage import Stage, StageConfig, append_columns


class ImageConfig(StageConfig):
    max_decode_pixels: int = Field(
        100_000_000,
        gt=0,
        le=2 * Image.MAX_IMAGE_PIXELS,
        description="Images whose header declares more pixels are not decoded (decompression "
        "bomb guard) and get a decode_error. Pillow refuses more than 2 * MAX_IMAGE_PIXELS anyway.",
    )


class ImageSignals(Stage):
    """Decode each image once with Pillow and record what it is."""

    name = "image"
    Config = ImageConfig
    reads = ("image",)
    writes = {
        "width": pa.int32(),
        "height": pa.int32(),
        "format": pa.string(),
        "bytes": pa.int64(),
        "decode_error": pa.string(),
    }

    def process(self, batch: pa.Table) -> pa.Table:
        cols: dict[str, list] = {name: [] for name in self.writes}
        for data in batch.column("image").to_pylist():
            row = measure_image(data, self.config.max_decode_pixels)
            for name in self.writes:
                cols[name].append(row[name])
        return append_columns(batch, cols, self.writes)


def measure_image(data: bytes | None, max_decode_pixels: int) -> dict:
    """Width, height, format, byte size and decode error (None when fine) of encoded bytes."""
    row = {"width": None, "height": None, "format": None, "bytes": None, "decode_error": None}
    if data is None:
        return row
    row["bytes"] = len(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our limit decides
            with Image.open(io.BytesIO(data)) as im:
                row["format"] = (im.format or "").lower() or None
                row["width"], row["height"] = im.size
                if im.size[0] * im.size[1] > max_decode_pixels:
                    row["decode_error"] = (
                        f"declared size {im.size[0]}x{im.size[1]} exceeds max_decode_pixels"
                    )
                    return row
                im.load()
    except Exception as err:  # a per-row error is data, not a crash: it becomes decode_error
        row["decode_error"] = f"{type(err).__name__}: {err}"[:300]
    return row
