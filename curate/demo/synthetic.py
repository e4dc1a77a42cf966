"""A synthetic run directory ready for emit: raw tars of tiny distinct images, ``samples/`` and
``decisions/``, written directly (no download, no annotate). For emit's tests and benchmarks."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


def tiny_image(i: int, fmt: str = "JPEG", size: tuple[int, int] = (8, 6)) -> bytes:
    """A ``size`` (width, height) image of random 4x4-pixel cells seeded by ``i``: every image differs,
    also after JPEG (flat colours would not: nearby colours encode to the same bytes)."""
    width, height = size
    cells = np.random.default_rng(i).integers(0, 256, (-(-height // 4), -(-width // 4), 3), dtype=np.uint8)
    pixels = cells.repeat(4, axis=0).repeat(4, axis=1)[:height, :width]
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=fmt)
    return out.getvalue()


def synthetic_run(run_dir: str | Path, rows: int, raw_shards: int, keep_every: int = 2, png_every: int = 0) -> int:
    """Write ``rows`` samples over ``raw_shards`` raw shards into ``run_dir``; every ``keep_every``-th
    is kept (none when 0; the rest rejected ``too_small``), every ``png_every``-th image is a PNG. Returns the kept count."""
    run_dir = Path(run_dir)
    for folder in ("raw", "samples", "decisions"):
        (run_dir / folder).mkdir(parents=True, exist_ok=True)
    per_shard = -(-rows // raw_shards)
    decisions = []
    for s in range(raw_shards):
        ids = range(s * per_shard, min(rows, (s + 1) * per_shard))
        samples = _raw_shard(run_dir, f"{s:05d}", ids, png_every)
        pq.write_table(samples, run_dir / "samples" / f"{s:05d}.parquet")
        keep = pa.array([bool(keep_every) and i % keep_every == 0 for i in ids])
        decisions.append(
            pa.table(
                {
                    "key": samples.column("key"),
                    "keep": keep,
                    "reason": pa.array([None if k else "too_small" for k in keep.to_pylist()], pa.string()),
                }
            )
        )
    pq.write_table(pa.concat_tables(decisions), run_dir / "decisions" / "decisions.parquet")
    return sum(1 for i in range(rows) if keep_every and i % keep_every == 0)


def _raw_shard(run_dir: Path, shard: str, ids: range, png_every: int) -> pa.Table:
    """Write ``raw/{shard}.tar`` and return its samples rows (with the images' offsets)."""
    columns: dict[str, list] = {c: [] for c in COLUMNS}
    with tarfile.open(run_dir / "raw" / f"{shard}.tar", "w") as tar:
        for i in ids:
            png = bool(png_every) and i % png_every == 0
            data = tiny_image(i, "PNG" if png else "JPEG")
            key = f"{i:09d}"
            info = tarfile.TarInfo(f"{key}.{'png' if png else 'jpg'}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            offset = tar.offset - len(data) - (-len(data) % 512)
            values = {
                "key": key,
                "url": f"https://example.com/{key}.jpg",
                "caption": f"a tiny picture number {i}",
                "raw_shard": shard,
                "image_offset": offset,
                "image_size": len(data),
                "status": "success",
                "format": "png" if png else "jpeg",
                "width": 8,
                "height": 6,
                "sha256": hashlib.sha256(data).hexdigest(),
                "phash": (i * 0x9E3779B97F4A7C15) % (1 << 64),
                "clip_score": (i % 100) / 100,
            }
            for column in COLUMNS:
                columns[column].append(values.get(column))
    return pa.table({c: pa.array(v, COLUMNS[c]) for c, v in columns.items()})


COLUMNS = {
    "key": pa.string(),
    "url": pa.string(),
    "caption": pa.string(),
    "raw_shard": pa.string(),
    "image_offset": pa.int64(),
    "image_size": pa.int64(),
    "status": pa.string(),
    "error_message": pa.string(),
    "decode_error": pa.string(),
    "format": pa.string(),
    "width": pa.int32(),
    "height": pa.int32(),
    "sha256": pa.string(),
    "phash": pa.uint64(),
    "clip_score": pa.float32(),
}
"""The samples columns written (a subset of what annotate writes, with the ones emit reads)."""
