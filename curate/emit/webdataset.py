"""WebDataset tar writer: ``{key}.jpg``, ``{key}.txt``, ``{key}.json`` per sample."""

from __future__ import annotations

import io
import json
import tarfile
import time

from curate.images import decode
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
    """Re-encode any Pillow-readable image as JPEG, decoded by :func:`curate.images.decode`.

    No decode limit beyond Pillow's own: emit writes what decide kept, and the image stage applied
    the recipe's ``max_decode_pixels`` before that.
    """
    out = io.BytesIO()
    decode(image, max_pixels=None).save(out, format="JPEG", quality=quality)
    return out.getvalue()
