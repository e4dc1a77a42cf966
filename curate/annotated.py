"""Annotate's outputs, one file per raw shard: ``RUN/samples/{shard}.parquet`` and ``RUN/embeddings/{shard}.parquet``.

A task of the annotate pipeline (:func:`curate.runtime.annotate`) that read a whole raw shard and ran every
stage commits it directly (:func:`commit_shard` on its rows). Otherwise (model stages, or a shard split over
several tasks) the pipeline ends in :func:`write_parts`, which writes each batch's rows, grouped by raw shard,
as part files under ``RUN/.tmp/annotate-parts/{shard}/`` and returns a few bytes per part. Once a shard's parts
hold as many rows as its input (:func:`input_counts`), :func:`commit_shard` merges them into the shard's files.
Either way the embeddings come first, then the samples, each written whole (one PUT on object storage). A shard's
samples file is its completion marker, so a killed annotate resumes with the shards that have none (:func:`prune`).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate import storage
from curate.emit.parquet import write_parquet

PARTS = "annotate-parts"
"""``RUN/.tmp/annotate-parts/``: rows of shards not yet committed (``clean_leftovers`` removes a killed run's)."""

FOLDERS = ("samples", "embeddings")
"""Where annotate writes, one ``{raw_shard}.parquet`` in each per shard (embeddings only when computed)."""

LAYOUT = "per_shard"
"""The annotate record's ``layout``: runs without it wrote ``samples/`` as a whole (any file names)."""

SUMMARY = pa.schema([("shard", pa.string()), ("rows", pa.int64()), ("path", pa.string())])
"""What :func:`write_parts` returns for each part file it wrote."""


def shard_file(run_dir: str, folder: str, shard: str) -> str:
    """``RUN/{folder}/{shard}.parquet``."""
    return storage.join(run_dir, folder, f"{shard}.parquet")


def input_counts(run_dir: str) -> dict[str, int]:
    """Input rows per raw shard, counted by DuckDB without loading rows here: from ``RUN/input/{shard}.parquet``
    files, or from the ``raw_shard`` column of a single ``RUN/input/urls.parquet`` (runs staged before)."""
    folder = storage.join(run_dir, "input")
    paths = [p for p in storage.files(folder) if storage.name(p) != "urls.parquet"]
    paths = paths or [storage.join(folder, "urls.parquet")]
    rows = (
        storage.duckdb_for(run_dir)
        .sql("SELECT raw_shard, count(*) FROM read_parquet($paths) GROUP BY raw_shard", params={"paths": paths})
        .fetchall()
    )
    return {shard: int(n) for shard, n in rows}


def committed(run_dir: str) -> set[str]:
    """The raw shards whose ``samples/{shard}.parquet`` exists."""
    names = (storage.name(p) for p in storage.entries(storage.join(run_dir, "samples")))
    return {n.removesuffix(".parquet") for n in names if n.endswith(".parquet")}


def prune(run_dir: str, shards: Sequence[str], everything: bool = False) -> set[str]:
    """Remove what annotate must not reuse and return the shards whose samples are committed.

    Removed: every file when ``everything`` (the stages changed), else the files of shards not in
    ``shards`` (and an older run's files, which were not named by shard), and on object storage the
    ``_COMMITTED`` marker of the folder-at-once layout, which would hide per-shard files from readers.
    """
    wanted = set() if everything else {f"{s}.parquet" for s in shards}
    kept: dict[str, set[str]] = {}
    for folder in FOLDERS:
        base = storage.join(run_dir, folder)
        storage.rm(storage.join(base, storage.COMMITTED))
        found = {storage.name(p) for p in storage.entries(base) if p.endswith(".parquet")}
        for name in sorted(found - wanted):
            storage.rm(storage.join(base, name))
        kept[folder] = found & wanted
    return {n.removesuffix(".parquet") for n in kept["samples"]}


def write_parts(batch: pa.Table, parts_dir: str) -> pa.Table:
    """Write ``batch``'s rows of each raw shard to ``parts_dir/{shard}/{uuid}.parquet``; return one summary
    row (shard, rows, path) per file written. The last op of the annotate pipeline."""
    summary: dict[str, list] = {"shard": [], "rows": [], "path": []}
    for shard in pc.unique(batch.column("raw_shard")).to_pylist():
        rows = batch.filter(pc.equal(batch.column("raw_shard"), shard))
        path = storage.join(parts_dir, shard, f"{uuid.uuid4().hex}.parquet")
        storage.makedirs(storage.join(parts_dir, shard))
        with fsspec.open(path, "wb") as f:  # one PUT; only parts the driver was told of are ever read
            pq.write_table(rows, f)
        for field, value in (("shard", shard), ("rows", len(rows)), ("path", path)):
            summary[field].append(value)
    return pa.table(summary, schema=SUMMARY)


def commit_shard(shard: str, parts: Sequence[str] | pa.Table, run_dir: str, embedding_columns: Sequence[str]) -> int:
    """Commit raw shard ``shard``: its rows, sorted by key, go to its embeddings file (``key`` + the embedding
    columns, when there are any), then its samples file. ``parts`` is either the part files that hold them
    (removed once committed) or the rows themselves (a task that annotated the whole shard). Returns its rows."""
    paths = [] if isinstance(parts, pa.Table) else list(parts)
    table = parts if isinstance(parts, pa.Table) else _read_parts(paths)
    table = table.sort_by("key")
    present = [c for c in embedding_columns if c in table.column_names]
    if present:
        write_parquet(shard_file(run_dir, "embeddings", shard), table.select(["key", *present]))
    write_parquet(shard_file(run_dir, "samples", shard), table.drop_columns(present))  # the completion marker
    for path in paths:
        storage.rm(path)
    return len(table)


def _read_parts(paths: Sequence[str]) -> pa.Table:
    tables = []
    for path in paths:
        with fsspec.open(path, "rb") as f:
            tables.append(pq.read_table(f))
    return pa.concat_tables(tables, promote_options="default")
