"""Plan and write the curated shards: shuffle the kept rows, cut them into shards, copy bytes once."""

from __future__ import annotations

from collections import defaultdict

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from curate.emit.parquet import write_parquet
from curate.emit.webdataset import WebDatasetWriter

INTERNAL_COLUMNS = (
    "raw_shard",
    "image_offset",
    "image_size",
    "status",
    "error_message",
    "decode_error",
)
"""Sample columns that locate bytes in ``raw/`` or describe failures; not part of emitted metadata."""


class EmitConfig(BaseModel):
    """How curated shards are written."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    samples_per_shard: int = Field(10_000, gt=0, description="Samples per emitted tar (the last may hold fewer).")
    shuffle_seed: int | None = Field(0, description="Seed of the global shuffle; null keeps key order.")
    jpeg_quality: int = Field(95, ge=1, le=100, description="Quality when a non-JPEG image is re-encoded.")


def plan_shards(kept: pa.Table, cfg: EmitConfig) -> list[pa.Table]:
    """Shuffle ``kept`` (deterministically) and cut it into tables of ``samples_per_shard`` rows."""
    kept = kept.sort_by("key")
    if cfg.shuffle_seed is not None:
        order = np.random.default_rng(cfg.shuffle_seed).permutation(len(kept))
        kept = kept.take(pa.array(order))
    n = cfg.samples_per_shard
    return [kept.slice(start, n) for start in range(0, len(kept), n)]


def write_shard(rows: pa.Table, run_dir: str, out_dir: str, name: str, cfg: EmitConfig) -> int:
    """Write ``out_dir/shards/{name}.tar`` and ``out_dir/metadata/{name}.parquet``; return rows written."""
    images = _read_images(rows, run_dir)
    meta = final_caption(rows.drop_columns([c for c in INTERNAL_COLUMNS if c in rows.column_names]))
    records = meta.to_pylist()
    with WebDatasetWriter(f"{out_dir}/shards/{name}.tar", cfg.jpeg_quality) as writer:
        for record, fmt in zip(records, rows.column("format").to_pylist(), strict=True):
            writer.write(record["key"], images[record["key"]], fmt, record["caption"], record)
    meta = meta.append_column("shard", pa.array([f"{name}.tar"] * len(meta), pa.string()))
    write_parquet(f"{out_dir}/metadata/{name}.parquet", meta)
    return writer.count


def final_caption(meta: pa.Table) -> pa.Table:
    """``caption`` becomes the caption to train on; the alt text as given moves to ``caption_alt``.

    The final caption is ``caption_norm`` (cleaned by the caption stage) where it is non-empty,
    else the alt text.
    """
    alt = meta.column("caption")
    final = alt
    if "caption_norm" in meta.column_names:
        norm = meta.column("caption_norm")
        final = pc.if_else(pc.fill_null(pc.greater(pc.utf8_length(norm), 0), False), norm, alt)
    index = meta.column_names.index("caption")
    return meta.set_column(index, "caption", final).append_column("caption_alt", alt)


def _read_images(rows: pa.Table, run_dir: str) -> dict[str, bytes]:
    """Read each row's image bytes from its raw tar by offset, one open file per raw shard."""
    by_shard: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
    for key, shard, offset, size in zip(
        *(rows.column(c).to_pylist() for c in ("key", "raw_shard", "image_offset", "image_size")),
        strict=True,
    ):
        by_shard[shard].append((offset, size, key))
    images: dict[str, bytes] = {}
    for shard, spans in by_shard.items():
        with fsspec.open(f"{run_dir}/raw/{shard}.tar", "rb") as f:
            for offset, size, key in sorted(spans):
                f.seek(offset)
                images[key] = f.read(size)
    return images
