"""Plan and write the curated shards: shuffle the kept rows, cut them into shards, copy bytes once."""

from __future__ import annotations

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from curate.emit.llava import image_path, llava_records
from curate.emit.parquet import write_parquet
from curate.emit.webdataset import WebDatasetWriter
from curate.raw import read_images

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
    llava: bool = Field(False, description="Also write RUN/llava/: LLaVA stage-1/stage-2 JSON and the images.")


def plan_shards(kept: pa.Table, cfg: EmitConfig) -> list[pa.Table]:
    """Shuffle ``kept`` (deterministically) and cut it into tables of ``samples_per_shard`` rows."""
    kept = kept.sort_by("key")
    if cfg.shuffle_seed is not None:
        order = np.random.default_rng(cfg.shuffle_seed).permutation(len(kept))
        kept = kept.take(pa.array(order))
    n = cfg.samples_per_shard
    return [kept.slice(start, n) for start in range(0, len(kept), n)]


def write_shard(
    rows: pa.Table, run_dir: str, out_dir: str, name: str, cfg: EmitConfig, caption_policy: str = "alt"
) -> tuple[int, dict]:
    """Write ``out_dir/shards/{name}.tar`` and ``out_dir/metadata/{name}.parquet`` (and, with
    ``cfg.llava``, the images under ``out_dir/llava/``); return the rows written and the LLaVA records.

    Each sample's ``.json`` is its metadata row with uint64 hashes as signed int64 (:func:`json_safe`).
    """
    images = read_images(rows, run_dir)
    meta = final_caption(rows.drop_columns([c for c in INTERNAL_COLUMNS if c in rows.column_names]), caption_policy)
    records = json_safe(meta).to_pylist()
    with WebDatasetWriter(f"{out_dir}/shards/{name}.tar", cfg.jpeg_quality) as writer:
        for record, fmt in zip(records, rows.column("format").to_pylist(), strict=True):
            jpg = writer.write(record["key"], images[record["key"]], fmt, record["caption"], record)
            if cfg.llava:
                with fsspec.open(f"{out_dir}/llava/{image_path(name, record['key'])}", "wb", auto_mkdir=True) as f:
                    f.write(jpg)
    meta = meta.append_column("shard", pa.array([f"{name}.tar"] * len(meta), pa.string()))
    write_parquet(f"{out_dir}/metadata/{name}.parquet", meta)
    pretrain, instruct = llava_records(records, name) if cfg.llava else ([], [])
    return writer.count, {"pretrain": pretrain, "instruct": instruct}


def json_safe(table: pa.Table) -> pa.Table:
    """``table`` with every uint64 column (``phash``, ``dhash``, ``caption_hash``) as signed int64.

    The per-sample ``.json`` holds these as the same 64 bits read as a two's-complement int64
    (``value & 0xFFFFFFFFFFFFFFFF`` gives the unsigned hash back; XOR-popcount distances are
    unchanged), so JSON readers that type integers as int64 (Hugging Face ``datasets``, Ray's
    ``read_webdataset``) load them. ``metadata/`` Parquet keeps the uint64 values.
    """
    for i, field in enumerate(table.schema):
        if pa.types.is_uint64(field.type):
            table = table.set_column(i, field.name, pc.cast(table.column(i), pa.int64(), safe=False))
    return table


def final_caption(meta: pa.Table, policy: str = "alt") -> pa.Table:
    """``caption`` becomes the caption to train on, ``caption_source`` says which; the alt text as
    given moves to ``caption_alt``.

    The alt caption is ``caption_norm`` (cleaned by the caption stage) where non-empty, else the
    alt text. With ``caption_synthetic`` (the recaption stage), ``policy`` picks: ``alt``;
    ``synthetic`` (where non-empty); ``both``: the one with the higher CLIP score where both are
    scored, else the synthetic one.
    """
    alt = meta.column("caption")
    final = alt
    if "caption_norm" in meta.column_names:
        norm = meta.column("caption_norm")
        final = pc.if_else(pc.fill_null(pc.greater(pc.utf8_length(norm), 0), False), norm, alt)
    use_synthetic = pa.array([False] * len(meta))
    if policy != "alt" and "caption_synthetic" in meta.column_names:
        synthetic = meta.column("caption_synthetic")
        use_synthetic = pc.fill_null(pc.greater(pc.utf8_length(synthetic), 0), False)
        if policy == "both":
            better = pc.greater(meta.column("clip_score_synthetic"), meta.column("clip_score_alt"))
            use_synthetic = pc.and_(use_synthetic, pc.fill_null(better, True))
        final = pc.if_else(use_synthetic, synthetic, final)
    source = pc.if_else(use_synthetic, pa.scalar("synthetic"), pa.scalar("alt"))
    index = meta.column_names.index("caption")
    meta = meta.set_column(index, "caption", final).append_column("caption_alt", alt)
    return meta.append_column("caption_source", source)
