"""WebDataset tar writer: ``{key}.jpg``, ``{key}.txt``, ``{key}.json`` per sample."""

from __future__ import annotations

import io
import json
import tarfile
import time

import numpy as np
from PIL import Image

from curate.io import AtomicFile


class WebDatasetWriter:
    """Writes one tar shard atomically; JPEG bytes pass through, other formats become JPEG."""

    def __init__(self, path: str, jpeg_quality: int = 95) -> None:
        self.path = path
        self.jpeg_quality = jpeg_quality
        self._atomic = AtomicFile(path)
        self._tar: tarfile.TarFile | None = None
        self.count = 0

    def __enter__(self) -> WebDatasetWriter:
        self._tar = tarfile.open(fileobj=self._atomic.__enter__(), mode="w|")
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self._tar is not None
        self._tar.close()
        self._atomic.__exit__(exc_type, exc, tb)

    def write(self, key: str, image: bytes, image_format: str | None, caption: str, meta: dict) -> bytes:
        """Add one sample; ``image_format`` is Pillow's lower-case format name. Returns the JPEG written."""
        jpg = image if image_format == "jpeg" else to_jpeg(image, self.jpeg_quality)
        self._add(f"{key}.jpg", jpg)
        self._add(f"{key}.txt", (caption or "").encode())
        self._add(f"{key}.json", json.dumps(meta, default=str).encode())
        self.count += 1
        return jpg

    def _add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = int(time.time())
        self._tar.addfile(info, io.BytesIO(data))


def to_jpeg(image: bytes, quality: int) -> bytes:
    """Re-encode any Pillow-readable image (first frame) as RGB JPEG, alpha composited on white."""
    with Image.open(io.BytesIO(image)) as im:
        im.seek(0)
        rgba = _to_8bit(im).convert("RGBA")
    rgb = Image.new("RGB", rgba.size, (255, 255, 255))
    rgb.paste(rgba, mask=rgba.getchannel("A"))
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def _to_8bit(im: Image.Image) -> Image.Image:
    """Scale 16/32-bit and float images to 8 bits (Pillow's own conversion clips them)."""
    if im.mode not in ("I", "I;16", "I;16B", "I;16L", "F"):
        return im
    values = np.asarray(im, dtype=np.float64)
    low, high = float(values.min()), float(values.max())
    scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
    return Image.fromarray(scaled.astype(np.uint8), mode="L")
