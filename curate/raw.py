"""Read acquired shards back as Arrow tables: every input row of a shard, with its image bytes.

``status`` is img2dataset's (``success``, ``failed_to_download``, ``failed_to_resize``) or, for a
download curate refused or cut off, its reason code (``download_timeout``, ``too_large_download``,
``blocked_address``, ``blocked_redirect``, ``robots_disallowed``, ``blocked_url``; see ``curate.fetch``);
``bad_url``, ``missing`` and ``missing_image`` name what img2dataset cannot (see ``_fix_status``).

The input table (``RUN/input/urls.parquet``) is the source of truth for which rows exist;
img2dataset's per-shard Parquet adds the download status and the tar adds the bytes. A row
img2dataset lost still comes out, with status ``missing``, so nothing is dropped silently.
"""

from __future__ import annotations

import tarfile
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from curate import storage

BASE_COLUMNS: dict[str, pa.DataType] = {
    "key": pa.string(),
    "url": pa.string(),
    "caption": pa.string(),
    "status": pa.string(),
    "error_message": pa.string(),
    "raw_shard": pa.string(),
    "original_width": pa.int32(),
    "original_height": pa.int32(),
    "image_offset": pa.int64(),
    "image_size": pa.int64(),
    "image": pa.binary(),
}
"""Columns every annotate batch starts with (plus the recipe's additional input columns)."""

RAW_META_COLUMNS = ["key", "status", "error_message", "original_width", "original_height"]
"""What img2dataset's per-shard Parquet adds (original sizes are set only when it resized)."""

IMAGE_EXT = "jpg"  # img2dataset names every image member .jpg; the bytes keep their format


def raw_file(run_dir: str | Path, shard: str, suffix: str) -> str:
    """Where raw shard ``shard``'s file with ``suffix`` (``.tar``, ``.parquet``, ``_stats.json``) is.

    The one place that knows the layout: every reader of acquired bytes goes through it.
    """
    return f"{run_dir}/raw/{shard}{suffix}"


def read_shard(run_dir: str, shard: str, chunk_rows: int = 512) -> Iterator[pa.Table]:
    """Yield the rows of raw shard ``shard`` in chunks, joined with their bytes."""
    inputs = _input_rows(run_dir, shard)
    meta = _raw_meta(raw_file(run_dir, shard, ".parquet"))
    images = _tar_images(raw_file(run_dir, shard, ".tar"))
    table = inputs.join(meta, "key", join_type="left outer").join(images, "key", join_type="left outer")
    table = table.sort_by("key")
    table = _fix_status(table)
    for start in range(0, len(table), chunk_rows):
        yield table.slice(start, chunk_rows)


def _raw_meta(path: str) -> pa.Table:
    """The per-shard Parquet's metadata; a download's reason code (``error_code``) replaces its status.

    Shards written before curate recorded ``error_code`` lack the column and keep img2dataset's status.
    """
    fsys, path = storage.arrow_fs(path)
    names = pq.read_schema(path, filesystem=fsys).names
    meta = pq.read_table(
        path, filesystem=fsys, columns=RAW_META_COLUMNS + (["error_code"] if "error_code" in names else [])
    )
    if "error_code" not in names:
        return meta
    code = meta.column("error_code")
    specific = pc.and_(pc.is_valid(code), pc.not_equal(code, "download_error"))
    status = pc.if_else(pc.fill_null(specific, False), code, meta.column("status"))
    return meta.set_column(meta.column_names.index("status"), "status", status).drop_columns(["error_code"])


def _input_rows(run_dir: str, shard: str) -> pa.Table:
    fsys, path = storage.arrow_fs(storage.join(run_dir, "input", "urls.parquet"))
    return pads.dataset(path, filesystem=fsys).to_table(filter=pc.field("raw_shard") == shard)


def _tar_images(path: str) -> pa.Table:
    """Key, data offset, size and bytes of every image member of an img2dataset tar."""
    keys, offsets, sizes, blobs = [], [], [], []
    with fsspec.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
        for member in tar:
            stem, _, ext = member.name.rpartition(".")
            if ext != IMAGE_EXT or not member.isfile():
                continue
            keys.append(stem)
            offsets.append(member.offset_data)
            sizes.append(member.size)
            blobs.append(tar.extractfile(member).read())
    return pa.table(
        {"key": keys, "image_offset": offsets, "image_size": sizes, "image": blobs},
        schema=pa.schema([(n, BASE_COLUMNS[n]) for n in ("key", "image_offset", "image_size", "image")]),
    )


def _fix_status(table: pa.Table) -> pa.Table:
    """Name the row states img2dataset cannot: never requested, lost, or success without bytes."""
    status = table.column("status")
    has_image = pc.is_valid(table.column("image"))
    status = pc.if_else(pc.is_null(status), pa.scalar("missing"), status)
    status = pc.if_else(pc.and_(pc.equal(status, "success"), pc.invert(has_image)), "missing_image", status)
    status = pc.if_else(table.column("fetchable"), status, pa.scalar("bad_url"))
    table = table.set_column(table.column_names.index("status"), "status", status)
    return table.drop_columns(["fetchable"])


def read_images(rows: pa.Table, run_dir: str) -> dict[str, bytes]:
    """Read each row's image bytes from its raw tar by offset, one open file per raw shard."""
    by_shard: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
    for key, shard, offset, size in zip(
        *(rows.column(c).to_pylist() for c in ("key", "raw_shard", "image_offset", "image_size")),
        strict=True,
    ):
        by_shard[shard].append((offset, size, key))
    images: dict[str, bytes] = {}
    for shard, spans in by_shard.items():
        with fsspec.open(raw_file(run_dir, shard, ".tar"), "rb") as f:
            for offset, size, key in sorted(spans):
                f.seek(offset)
                images[key] = f.read(size)
    return images
