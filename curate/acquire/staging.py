"""Staging a run's input without holding it on the driver: ``RUN/input/{raw_shard}.parquet`` and its fingerprint.

A URL list is keyed row by row (row i of the concatenated list files, see :class:`curate.acquire.download.ShardLayout`)
and cut into raw shards of ``acquire.samples_per_shard`` rows, each written to its own file. Lists whose files
total at most ``input.driver_max_bytes`` are read on the driver (:func:`stage_table`, errors before Ray starts);
larger ones by Ray tasks (:func:`stage_lists`): one task per list file reads and checks it and stores its named
columns as Arrow IPC under ``RUN/.tmp/``; the driver sums the row counts into offsets; one task per raw shard
reads the row ranges it needs, keys them and writes the shard. Both give byte-identical files.

The fingerprint that refuses resuming a run with another input combines one digest per raw shard (of its keys,
URLs and captions), in shard order, so no step needs every row at once. Runs made before it hashed one table's
buffers; their fingerprint is recomputed from their ``input/urls.parquet`` (:func:`check_fingerprint`).

Acquire and retry tasks read their shard's rows themselves (:func:`acquire_shard`, :func:`retry_input_shard`).
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate import storage
from curate.acquire.download import AcquireConfig, ShardLayout, download_shard, retry_shard
from curate.acquire.inputs import (
    InputConfig,
    InputError,
    ListFile,
    add_keys,
    list_files,
    named_rows,
    read_inputs,
    shard_rows,
    spec_name,
)
from curate.acquire.raw import LEGACY_INPUT, _input_rows
from curate.annotated import FOLDERS, shard_file
from curate.emit.parquet import write_parquet

FINGERPRINT_VERSION = 2
"""``input_fingerprint_version`` in the manifest: fingerprints of per-shard digests (absent: an earlier scheme)."""

BATCH_ROWS = 65_536
"""Rows per record batch of a list file's staged copy (a shard task reads only the batches it needs)."""


@dataclass(frozen=True)
class Staged:
    """What staging found: the number of input rows and one digest per raw shard, in shard order."""

    rows: int
    digests: list[str]

    @property
    def fingerprint(self) -> str:
        """The input's fingerprint: a hash of the shards' digests, in order."""
        return hashlib.sha256("".join(self.digests).encode()).hexdigest()[:16]


def shard_digest(rows: pa.Table) -> str:
    """A hash of ``rows``' keys, URLs and captions (values and nulls, whatever the table's chunking)."""
    digest = hashlib.sha256()
    for name in ("key", "url", "caption"):
        lengths, data = _canonical(rows.column(name))
        digest.update(lengths)
        digest.update(data)
    return digest.hexdigest()


def _canonical(column: pa.ChunkedArray) -> tuple[bytes, memoryview]:
    """A text column as (lengths, -1 for null, little-endian int64; the values' bytes, concatenated)."""
    array = column.combine_chunks().cast(pa.string())
    if len(array) == 0:
        return b"", memoryview(b"")
    valid = pc.is_valid(array).to_numpy(zero_copy_only=False)
    array = pc.fill_null(array, "")
    offsets = np.frombuffer(array.buffers()[1], np.int32)[array.offset : array.offset + len(array) + 1]
    lengths = np.where(valid, np.diff(offsets), -1).astype("<i8")
    data = array.buffers()[2]  # a slice shares its parent's buffer: hash only its own span
    span = memoryview(b"") if data is None else memoryview(data)[int(offsets[0]) : int(offsets[-1])]
    return lengths.tobytes(), span


def commit_shard(rows: pa.Table, out: str | None) -> str:
    """Write one raw shard's input rows to ``out`` (when given, atomically); return their digest."""
    if out is not None:
        write_parquet(out, rows.combine_chunks())
    return shard_digest(rows)


def input_target(run_dir: str, manifest: dict) -> str | None:
    """The run's ``input/`` folder to stage into, emptied of what a killed first staging left; None when the
    run recorded its input already (a resume only checks the fingerprint, it never rewrites ``input/``)."""
    if manifest.get("input_fingerprint"):
        return None
    folder = storage.join(run_dir, "input")
    storage.rm(folder)
    storage.makedirs(folder)
    return folder


def check_fingerprint(run_dir: str, manifest: dict, staged: Staged) -> None:
    """Refuse a resumed run whose recorded input differs from ``staged``; then record ``staged`` in ``manifest``.

    A run made by an earlier version recorded another kind of fingerprint: the current one is recomputed from its
    ``input/urls.parquet`` (read once, on the driver, as that version did), so an unchanged input still resumes.
    """
    previous = manifest.get("input_fingerprint")
    if previous and manifest.get("input_fingerprint_version") != FINGERPRINT_VERSION:
        previous = legacy_fingerprint(run_dir)
    if previous and previous != staged.fingerprint:
        raise InputError(
            f"{run_dir} was made from a different URL list or acquire.samples_per_shard. "
            f"Use a new --output, or delete {run_dir} to start over."
        )
    manifest.update(
        input_fingerprint=staged.fingerprint, input_fingerprint_version=FINGERPRINT_VERSION, input_rows=staged.rows
    )


def legacy_fingerprint(run_dir: str) -> str:
    """The fingerprint of an earlier version's ``input/urls.parquet`` (rows shard by shard); '?' when missing."""
    path = storage.join(run_dir, "input", LEGACY_INPUT)
    if not storage.exists(path):
        return "?"
    with fsspec.open(path, "rb") as f:
        table = pq.read_table(f, columns=["key", "url", "caption", "raw_shard"])
    codes = pc.dictionary_encode(table.column("raw_shard")).combine_chunks().indices.to_numpy()
    bounds = [0, *(np.flatnonzero(np.diff(codes)) + 1).tolist(), len(table)]
    digests = [shard_digest(table.slice(a, b - a)) for a, b in itertools.pairwise(bounds) if b > a]
    return Staged(len(table), digests).fingerprint


# --- URL lists -------------------------------------------------------------------------------------------


def total_bytes(files: Sequence[ListFile]) -> int:
    """The list files' size as stored (an unknown size, e.g. of an HTTP file, counts 0)."""
    return sum(file.fs.size(file.path) or 0 for file in files)


def stage_table(inputs: pa.Table, layout: ShardLayout, folder: str | None) -> Staged:
    """Write the input table ``inputs`` (:func:`curate.acquire.inputs.read_inputs`, on the driver) shard by shard."""
    per = layout.samples_per_shard
    digests = [
        commit_shard(inputs.slice(i * per, per), shard_path(folder, layout.shard_name(i)))
        for i in range(layout.n_shards)
    ]
    return Staged(len(inputs), digests)


def stage_lists(
    files: list[ListFile],
    cfg: InputConfig,
    samples_per_shard: int,
    run_dir: str,
    folder: str | None,
    run_tasks: Callable,
    source: str,
) -> tuple[ShardLayout, Staged]:
    """Stage URL lists in Ray tasks (``run_tasks`` is :func:`curate.runtime.run_tasks`) into ``folder`` (None:
    only digest them): the driver holds row counts and per-shard digests, never rows. ``source`` names the
    lists in errors."""
    tmp = storage.join(run_dir, ".tmp", f"input-{uuid.uuid4().hex[:8]}")
    calls = [(file, cfg, storage.join(tmp, f"{i:05d}.arrow")) for i, file in enumerate(files)]
    scanned = [result for result, _ in run_tasks(scan_list, calls, "read URL lists")]
    schema = _unify([s for _, s in scanned], source)
    starts = np.cumsum([0, *(n for n, _ in scanned)]).tolist()
    if starts[-1] == 0:
        raise InputError(f"{source}: no rows (only the columns {', '.join(schema.names)}): nothing to curate.")
    layout = ShardLayout(starts[-1], samples_per_shard)
    shards = []
    for i in range(layout.n_shards):
        pieces = _pieces(starts, [c[2] for c in calls], i * layout.samples_per_shard, layout)
        shards.append((i, pieces, schema, layout, shard_path(folder, layout.shard_name(i))))
    digests = [digest for digest, _ in run_tasks(write_list_shard, shards, "stage input shards")]
    storage.rm(tmp)
    return layout, Staged(starts[-1], digests)


def shard_path(folder: str | None, shard: str) -> str | None:
    """``folder/{shard}.parquet``, or None without a folder (nothing is written)."""
    return None if folder is None else storage.join(folder, f"{shard}.parquet")


def _unify(schemas: list[pa.Schema], source: str) -> pa.Schema:
    """The list files' common schema, as :func:`curate.acquire.inputs.concat` unifies their tables."""
    try:
        return pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise InputError(f"{source}: the list files disagree on a column's type ({err}). Make them agree.") from None


def _pieces(starts: list[int], paths: list[str], first: int, layout: ShardLayout) -> list[tuple[str, int, int]]:
    """The (staged list file, first row, end row) ranges holding input rows ``first`` on of one shard."""
    stop = min(first + layout.samples_per_shard, starts[-1])
    pieces = []
    i = bisect.bisect_right(starts, first) - 1
    while i < len(paths) and starts[i] < stop:
        lo, hi = max(first, starts[i]), min(stop, starts[i + 1])
        if hi > lo:
            pieces.append((paths[i], lo - starts[i], hi - starts[i]))
        i += 1
    return pieces


def scan_list(file: ListFile, cfg: InputConfig, out: str) -> tuple[int, pa.Schema]:
    """Task: read and check one list file (:func:`curate.acquire.inputs.named_rows`), store its named columns as Arrow
    IPC batches of :data:`BATCH_ROWS` rows at ``out``; return its row count and schema."""
    table = named_rows(file, cfg)
    with fsspec.open(out, "wb") as f, pa.ipc.new_file(f, table.schema) as writer:
        for start in range(0, len(table), BATCH_ROWS):
            writer.write_batch(table.slice(start, BATCH_ROWS).combine_chunks().to_batches()[0])
    return len(table), table.schema


def write_list_shard(
    shard_id: int, pieces: list[tuple[str, int, int]], schema: pa.Schema, layout: ShardLayout, out: str | None
) -> str:
    """Task: key raw shard ``shard_id``'s rows (read from the staged list files' ``pieces``) and write them to
    ``out`` (None: only digest them); return their digest."""
    tables = [_read_range(path, lo, hi).cast(schema) for path, lo, hi in pieces]
    named = pa.concat_tables(tables)
    return commit_shard(add_keys(named, layout, shard_id * layout.samples_per_shard), out)


def _read_range(path: str, lo: int, hi: int) -> pa.Table:
    """Rows ``lo`` to ``hi`` of a staged list file, reading only the batches that hold them."""
    with fsspec.open(path, "rb") as f:
        reader = pa.ipc.open_file(f)
        first = lo // BATCH_ROWS
        batches = [reader.get_batch(b) for b in range(first, (hi - 1) // BATCH_ROWS + 1)]
        return pa.Table.from_batches(batches, reader.schema).slice(lo - first * BATCH_ROWS, hi - lo)


def stage_urls(
    spec, cfg: InputConfig, samples_per_shard: int, run_dir: str, manifest: dict, run_tasks: Callable | None
) -> tuple[ShardLayout, Staged] | None:
    """Stage the URL list(s) ``spec`` into ``RUN/input/`` (or check a resumed run's fingerprint).

    Lists larger than ``cfg.driver_max_bytes`` need ``run_tasks``: without it (before Ray starts) this returns
    None and nothing is read; smaller ones are read on the driver.
    """
    files = list_files(spec)
    large = total_bytes(files) > cfg.driver_max_bytes
    if large and run_tasks is None:
        return None
    if large:
        folder = input_target(run_dir, manifest)
        return stage_lists(files, cfg, samples_per_shard, run_dir, folder, run_tasks, spec_name(spec))
    inputs = read_inputs(spec, cfg, samples_per_shard)
    layout = ShardLayout(len(inputs), samples_per_shard)
    return layout, stage_table(inputs, layout, input_target(run_dir, manifest))


# --- acquire tasks ----------------------------------------------------------------------------------------


def acquire_shard(
    shard_id: int, run_dir: str, layout: ShardLayout, cfg: AcquireConfig, extra: list[str], blocklist
) -> dict:
    """Task: download raw shard ``shard_id``, reading its rows from ``RUN/input/`` (:func:`curate.acquire.inputs.shard_rows`)."""
    rows = shard_rows(_input_rows(run_dir, layout.shard_name(shard_id)), extra, blocklist)
    return download_shard(shard_id, rows, storage.join(run_dir, "raw"), layout, cfg)


def retry_input_shard(
    shard_id: int, run_dir: str, only: list[int], layout: ShardLayout, cfg: AcquireConfig, extra: list[str], blocklist
) -> dict:
    """Task: :func:`curate.acquire.download.retry_shard` of raw shard ``shard_id``, reading its rows from ``RUN/input/``;
    when the shard changes, its annotate files go first (only it is annotated again)."""
    name = layout.shard_name(shard_id)
    rows = shard_rows(_input_rows(run_dir, name), extra, blocklist)
    stale = [shard_file(run_dir, folder, name) for folder in FOLDERS]
    return retry_shard(shard_id, rows, only, storage.join(run_dir, "raw"), layout, cfg, stale)
