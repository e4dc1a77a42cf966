"""Plan and write the curated shards: the kept rows of each samples file, ordered by a seeded hash of
their key, cut into shards of exactly ``samples_per_shard`` rows, each written by every selected format.

Nothing here holds more than one samples file or one shard: :func:`curate.emit.run.emit` runs
:func:`kept_rows` and :func:`write_shard` in Ray tasks and sorts by :data:`ORDER` with Ray Data.
"""

from __future__ import annotations

import hashlib

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, field_validator

from curate import storage
from curate.acquire.raw import read_images
from curate.emit.base import Sample, Writer
from curate.emit.formats import FORMATS
from curate.emit.webdataset import as_jpeg

INTERNAL_COLUMNS = (
    "raw_shard",
    "image_offset",
    "image_size",
    "status",
    "error_message",
    "decode_error",
    "colour_sig",
)
"""Sample columns that locate bytes in ``raw/``, describe failures, or only serve decide (``colour_sig``, 192
floats a row that ``near_dedup`` checks): they stay in ``RUN/samples``, not in emitted metadata."""

ORDER = "_emit_order"
"""The sort column emit adds to kept rows (see :func:`order_keys`); never written."""


class EmitConfig(BaseModel):
    """How curated shards are written."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    samples_per_shard: int = Field(10_000, gt=0, description="Samples per emitted tar (the last may hold fewer).")
    shuffle_seed: int | None = Field(0, description="Seed of the global shuffle; null keeps key order.")
    jpeg_quality: int = Field(95, ge=1, le=100, description="Quality when a non-JPEG image is re-encoded.")
    formats: list[str] = Field(
        default_factory=lambda: ["webdataset", "parquet"],
        description="Output formats (curate.emit.formats.FORMATS): webdataset (shards/), parquet (metadata/), llava.",
    )
    llava: bool = Field(False, description="Also write RUN/llava/: LLaVA stage-1/stage-2 JSON and the images.")

    @field_validator("formats")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        unknown = [v for v in value if v not in FORMATS]
        if unknown or not value:
            raise ValueError(f"choose one or more of {', '.join(FORMATS)}")
        return list(dict.fromkeys(value))


def order_keys(keys: pa.Array | pa.ChunkedArray, seed: int | None) -> pa.Array:
    """Each key's place in the shuffle: the first 8 bytes of blake2b(f"{seed}:{key}") as uint64.

    Ties (and ``seed`` None: all zero, i.e. key order) are broken by the key, so the order is one
    total order of the kept keys whatever the blocks or the number of nodes.
    """
    if seed is None:
        return pa.array(np.zeros(len(keys), np.uint64))
    digest = [hashlib.blake2b(f"{seed}:{k}".encode(), digest_size=8).digest() for k in keys.to_pylist()]
    return pa.array(np.frombuffer(b"".join(digest), dtype=">u8").astype(np.uint64))


def kept_rows(run_dir: str, samples_file: str, enrich: dict[str, list[str]]) -> pa.Table:
    """The kept rows of one samples file, with the stored columns of each enrich stage (``enrich``:
    stage name → its ``writes``) joined by key (null where a row has none)."""
    samples = _read(samples_file)
    keep = pc.is_in(samples.column("key"), value_set=kept_keys(run_dir, samples_file))
    table = samples.filter(keep)
    for stage, columns in enrich.items():
        results = enrich_results(run_dir, stage, samples_file, columns)
        if results is None:
            continue
        index = pc.index_in(table.column("key"), value_set=results.column("key"))
        for column in columns:
            table = table.append_column(results.schema.field(column), results.column(column).take(index))
    return table


def kept_keys(run_dir: str, samples_file: str) -> pa.Array:
    """The kept keys among the decisions of ``samples_file``'s rows: ``decisions/{same name}`` when it
    exists (decisions per raw shard), else every file of ``decisions/``."""
    folder = storage.join(run_dir, "decisions")
    same = storage.join(folder, storage.name(samples_file))
    files = [same] if storage.isfile(same) else storage.files(folder)
    tables = [_read(f, ["key", "keep"], [("keep", "=", True)]) for f in files]
    keys = [t.column("key") for t in tables]
    return pa.chunked_array([c for k in keys for c in k.chunks], pa.string()).combine_chunks()


def enrich_results(run_dir: str, stage: str, samples_file: str, columns: list[str]) -> pa.Table | None:
    """Key and ``columns`` of an enrich stage's stored results for ``samples_file``'s rows, or None.

    Reads ``enrich/{stage}/{samples file name}`` (results per raw shard) when that folder exists,
    else ``enrich/{stage}.parquet``.
    """
    folder = storage.join(run_dir, "enrich", stage)
    if storage.isdir(folder):
        same = storage.join(folder, storage.name(samples_file))
        files = [same] if storage.isfile(same) else storage.files(folder)
    else:
        single = storage.join(run_dir, "enrich", f"{stage}.parquet")
        files = [single] if storage.isfile(single) else []
    if not files:
        return None
    return pa.concat_tables([_read(f, ["key", *columns]) for f in files])


def kept_schema(samples_files: list[str], run_dir: str, enrich: dict[str, list[str]]) -> pa.Schema:
    """The schema every :func:`kept_rows` table is cast to (from Parquet footers), so blocks of
    different samples files concatenate: the samples' unified schema, the enrich columns, :data:`ORDER`."""
    schemas = [_schema(f) for f in samples_files]
    fields = list(pa.unify_schemas(schemas, promote_options="permissive")) if schemas else []
    for stage, columns in enrich.items():
        stored = [_schema(f) for f in _enrich_files(run_dir, stage)]
        if stored:
            unified = pa.unify_schemas(stored, promote_options="permissive")
            fields += [unified.field(c) for c in columns]
    return pa.schema([*fields, pa.field(ORDER, pa.uint64())])


def _enrich_files(run_dir: str, stage: str) -> list[str]:
    folder = storage.join(run_dir, "enrich", stage)
    if storage.isdir(folder):
        return storage.files(folder)
    single = storage.join(run_dir, "enrich", f"{stage}.parquet")
    return [single] if storage.isfile(single) else []


def ordered_kept_rows(
    run_dir: str, samples_file: str, enrich: dict[str, list[str]], seed: int | None, schema: pa.Schema
) -> pa.Table:
    """:func:`kept_rows` with :data:`ORDER` (:func:`order_keys`), cast to ``schema`` (columns a file
    lacks are null)."""
    table = kept_rows(run_dir, samples_file, enrich)
    table = table.append_column(ORDER, order_keys(table.column("key"), seed))
    columns = [
        table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(len(table), f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def write_shard(
    rows: pa.Table,
    run_dir: str,
    out_dir: str,
    name: str,
    cfg: EmitConfig,
    formats: list[type[Writer]],
    caption_policy: str = "alt",
) -> tuple[int, list[dict]]:
    """Write shard ``name`` of ``rows`` (in order) with each writer class of ``formats``, image bytes read
    from ``raw/`` by offset; return the number of rows and each writer's summary."""
    images = read_images(rows, run_dir) if any(cls.images for cls in formats) else None
    dropped = [c for c in (*INTERNAL_COLUMNS, ORDER) if c in rows.column_names]
    meta = final_caption(rows.drop_columns(dropped), caption_policy)
    writers = [cls(out_dir, cfg) for cls in formats]
    for writer in writers:
        writer.open(name, meta.schema)
    try:
        for record, fmt in zip(meta.to_pylist(), rows.column("format").to_pylist(), strict=True):
            jpeg = b"" if images is None else as_jpeg(images[record["key"]], fmt, cfg.jpeg_quality)
            sample = Sample(record["key"], jpeg, record["caption"], record)
            for writer in writers:
                writer.write(sample)
    except BaseException:
        for writer in writers:
            writer.abort()
        raise
    return len(rows), [writer.close() for writer in writers]


def _read(url: str, columns: list[str] | None = None, filters: list | None = None) -> pa.Table:
    with fsspec.open(url, "rb") as f:
        return pq.read_table(f, columns=columns, filters=filters)


def _schema(url: str) -> pa.Schema:
    with fsspec.open(url, "rb") as f:
        return pq.read_schema(f)


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
