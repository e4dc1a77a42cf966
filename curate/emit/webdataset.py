"""WebDataset tar writer: ``{key}.jpg``, ``{key}.txt``, ``{key}.json`` per sample."""

from __future__ import annotations

import io
import json
import tarfile
import time

import pyarrow as pa

from curate.emit.base import Sample, Writer
from curate.images import decode
from curate.io import AtomicFile, write_json


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
        jpg = as_jpeg(image, image_format, self.jpeg_quality)
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


def as_jpeg(image: bytes, image_format: str | None, quality: int) -> bytes:
    """``image`` as JPEG: JPEG bytes pass through untouched, any other format is re-encoded (:func:`to_jpeg`)."""
    return image if image_format == "jpeg" else to_jpeg(image, quality)


def to_jpeg(image: bytes, quality: int) -> bytes:
    """Re-encode any Pillow-readable image as JPEG, decoded by :func:`curate.images.decode`.

    No decode limit beyond Pillow's own: emit writes what decide kept, and the image stage applied
    the recipe's ``max_decode_pixels`` before that.
    """
    out = io.BytesIO()
    decode(image, max_pixels=None).save(out, format="JPEG", quality=quality)
    return out.getvalue()


class WebDatasetFormat(Writer):
    """``shards/{shard}.tar`` per shard and ``shards/sizes.json`` (samples per tar) for the run.

    Each sample's ``.json`` is its metadata row with uint64 hashes as signed int64 (:func:`signed`).
    """

    name = "webdataset"
    folder = "shards"

    def open(self, shard: str, schema: pa.Schema) -> None:
        super().open(shard, schema)
        self._uint64 = [f.name for f in schema if pa.types.is_uint64(f.type)]
        self._tar = WebDatasetWriter(self.path(".tar"), self.cfg.jpeg_quality).__enter__()

    def write(self, sample: Sample) -> None:
        meta = sample.meta | {k: signed(sample.meta[k]) for k in self._uint64}
        self._tar.write(sample.key, sample.jpeg, "jpeg", sample.caption, meta)

    def close(self) -> dict:
        self._tar.__exit__(None, None, None)
        return {"tar": f"{self.shard}.tar", "samples": self._tar.count}

    def abort(self) -> None:
        self._tar.__exit__(RuntimeError, None, None)

    @classmethod
    def finish(cls, out_dir: str, cfg, summaries: list[dict]) -> dict:
        write_json(f"{cls.root(out_dir)}/sizes.json", {s["tar"]: s["samples"] for s in summaries})
        return {}


def signed(value: int | None) -> int | None:
    """A uint64 hash as the int64 with the same 64 bits (``value & 0xFFFFFFFFFFFFFFFF`` gives it back).

    JSON readers that type integers as int64 (Hugging Face ``datasets``, Ray's ``read_webdataset``) load
    it; XOR-popcount distances are unchanged. ``metadata/`` Parquet keeps the uint64 values.
    """
    return value - (1 << 64) if value is not None and value >= 1 << 63 else value
