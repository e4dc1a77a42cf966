"""Where enrich results live: ``RUN/enrich/{stage}/{raw_shard}.parquet`` and ``RUN/enrich/{stage}.json``.

A shard's file holds ``key`` and the stage's ``writes`` columns of every sample of that raw shard
captioned so far (kept now or before), sorted by key; the JSON file holds the settings they were
made with (``StageConfig.cache_key``): a change discards every result. Selecting the work of a
shard (its kept rows minus those with a result) and merging new results into its file are
per-shard functions that run as Ray tasks, so the driver holds shard names, never rows.

A run made before this layout has one ``RUN/enrich/{stage}.parquet``: its results are moved into
the shard files by the selection tasks (nothing is captioned again) and the file is removed.
"""

from __future__ import annotations

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from curate import storage
from curate.emit.parquet import write_parquet
from curate.io import write_json

TODO_COLUMNS = ("key", "raw_shard", "image_offset", "image_size", "caption")
"""What enrich needs of a samples row to re-read its image (plus ``caption_norm`` when annotate wrote it)."""


def folder(run_dir: str, stage: str) -> str:
    """``RUN/enrich/{stage}``: one results file per raw shard."""
    return storage.join(run_dir, "enrich", stage)


def settings_file(run_dir: str, stage: str) -> str:
    return storage.join(run_dir, "enrich", f"{stage}.json")


def legacy_file(run_dir: str, stage: str) -> str:
    """The single results file of runs made before results were kept per raw shard."""
    return storage.join(run_dir, "enrich", f"{stage}.parquet")


def start(run_dir: str, stage: str, settings: dict) -> bool:
    """Discard the stored results of ``stage`` unless they were made with ``settings``; True when discarded.

    The settings file is removed first and written back only once every shard is done (:func:`finish`),
    so a run killed in between starts over rather than mixing settings.
    """
    meta = settings_file(run_dir, stage)
    if storage.isfile(meta) and storage.read_json(meta) == settings:
        return False
    storage.rm(meta)
    storage.rm(folder(run_dir, stage))
    storage.rm(legacy_file(run_dir, stage))
    return True


def finish(run_dir: str, stage: str, settings: dict) -> None:
    """Record the settings of the results and drop the migrated pre-shard file."""
    storage.rm(legacy_file(run_dir, stage))
    write_json(settings_file(run_dir, stage), settings)


def read(url: str, columns: list[str] | None = None) -> pa.Table | None:
    """The Parquet file ``url``, or None when it does not exist."""
    if not storage.isfile(url):
        return None
    with fsspec.open(url, "rb") as f:
        return pq.read_table(f, columns=columns)


def select_todo(
    run_dir: str, stage: str, writes: list[str], shard: str, samples: list[str], out: str
) -> tuple[int, int]:
    """Write to ``out`` the kept samples of raw shard ``shard`` that have no ``stage`` result yet (if any).

    ``writes``: the stage's result columns. ``samples``: the samples files that may hold the shard's
    rows (only its own ``{shard}.parquet`` when annotate writes one per shard). Returns (rows to
    enrich, results already stored for the shard).
    """
    decisions = read(storage.join(run_dir, "decisions", f"{shard}.parquet"), ["key", "keep"])
    if decisions is None:
        decisions = pa.table({"key": pa.array([], pa.string()), "keep": pa.array([], pa.bool_())})
    kept = decisions.filter(decisions.column("keep")).column("key").combine_chunks()
    store = storage.join(folder(run_dir, stage), f"{shard}.parquet")
    done = _stored(legacy_file(run_dir, stage), store, ["key", *writes], decisions.column("key").combine_chunks())
    rows = _samples_of(samples, shard, kept)
    rows = rows.filter(pc.invert(pc.is_in(rows.column("key"), done.column("key")))).sort_by("image_offset")
    if len(rows):
        write_parquet(out, rows)
    return len(rows), len(done)


def _stored(legacy_url: str, store: str, columns: list[str], keys: pa.Array) -> pa.Table:
    """The shard's stored results; rows of a pre-shard results file for the shard's ``keys`` are moved in first."""
    done = read(store, columns)
    legacy = read(legacy_url, columns)
    if legacy is not None:
        moved = legacy.filter(pc.is_in(legacy.column("key"), keys))
        if done is not None:
            moved = moved.filter(pc.invert(pc.is_in(moved.column("key"), done.column("key"))))
        if len(moved):
            done = moved if done is None else pa.concat_tables([done, moved.cast(done.schema)])
            write_parquet(store, done.sort_by("key"))
    return done if done is not None else pa.table({"key": pa.array([], pa.string())})


def _samples_of(samples: list[str], shard: str, keys: pa.Array) -> pa.Table:
    """The samples rows of raw shard ``shard`` whose key is in ``keys``: only the columns enrich needs."""
    fsys, paths = storage.arrow_paths(samples)
    dataset = pads.dataset(paths, filesystem=fsys, format="parquet")
    names = dataset.schema.names
    columns = [*TODO_COLUMNS, *(["caption_norm"] if "caption_norm" in names else [])]
    wanted = (pc.field("raw_shard") == shard) & pc.field("key").isin(keys)
    return dataset.to_table(columns=columns, filter=wanted)


def merge(columns: list[str], new_folder: str, store: str) -> int:
    """Add the results in ``new_folder`` (``columns``) to the shard file ``store`` (sorted by key, written whole);
    returns rows added."""
    fsys, paths = storage.arrow_paths(storage.files(new_folder))
    new = pads.dataset(paths, filesystem=fsys, format="parquet").to_table(columns=columns)
    old = read(store, columns)
    merged = new if old is None else pa.concat_tables([old, new.cast(old.schema)])
    write_parquet(store, merged.sort_by("key"))
    return len(new)


def shard_results(run_dir: str, stage: str) -> list[str]:
    """The results files of ``stage``, one per raw shard (what emit joins by key)."""
    return storage.files(folder(run_dir, stage))
