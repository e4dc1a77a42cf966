"""Decide: turn stored signals into keep/reject with a reason, in DuckDB, out of core.

The decisions are one Parquet file per raw shard, ``decisions/{raw_shard}.parquet`` (rows sorted by
key), written by streaming one sorted query: neither DuckDB nor this process holds the pool. DuckDB
works in an on-disk database under a local scratch folder and spills there beyond ``memory_limit``.
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import curate
from curate import storage
from curate.decide.base import DecideDB, Policy
from curate.decide.thresholds import Availability
from curate.io import replace_dir

DECISION_COLUMNS = ("key", "url", "caption", "keep", "reason", "stage", "dup_of")

UNSHARDED = "unsharded"
"""The file name (``decisions/unsharded.parquet``) of rows without a ``raw_shard`` (hand-made samples tables)."""

MEMORY_LIMIT = os.environ.get("CURATE_DECIDE_MEMORY", "40%")
"""DuckDB's memory limit for decide (``CURATE_DECIDE_MEMORY``: '8GB', '40%'...); beyond it, DuckDB spills to disk.
40 % of the machine leaves room for Ray's object store (30 % by default) and its workers."""

BATCH_ROWS = 65_536
"""Rows fetched from DuckDB at a time while writing the decisions."""


def decide(
    samples: str | list[str],
    policies: list[Policy],
    out_dir: str | Path,
    embeddings_dir: str | Path | None = None,
    info: dict | None = None,
    memory_limit: str = MEMORY_LIMIT,
) -> dict[str, int]:
    """Apply ``policies`` (after :class:`Availability`) to ``samples`` (Parquet files or a glob) and
    write the decisions folder ``out_dir`` (one file per raw shard), replacing it whole.

    Returns rejected counts per reason. Every samples row appears once in the output.
    """
    scratch = storage.local_tmp()
    con = storage.duckdb_for(str(out_dir), duckdb.connect(str(Path(scratch, "decide.duckdb"))))
    try:
        con.execute("SET temp_directory = $dir", {"dir": str(Path(scratch, "spill"))})
        con.execute("SET memory_limit = $limit", {"limit": memory_limit})
        con.execute("SET preserve_insertion_order = false")
        con.read_parquet(samples).create_view("samples")  # a path is data, never SQL text
        have = {row[0] for row in con.sql("DESCRIBE samples").fetchall()}
        shard = "raw_shard::VARCHAR" if "raw_shard" in have else "NULL"
        con.execute(  # what the decisions files carry, so writing them is a sort, not a join
            f"""CREATE TABLE verdict AS SELECT key, NULL::VARCHAR AS reason, NULL::VARCHAR AS stage,
                    NULL::VARCHAR AS dup_of, coalesce({shard}, '{UNSHARDED}') AS _shard, url, caption
                FROM samples"""
        )
        db = DecideDB(con, embeddings_dir)
        for policy in [Availability(), *policies]:
            policy.apply(db)
            con.execute("CHECKPOINT")  # updates move to disk: DuckDB keeps uncheckpointed ones in memory
        if info is not None:
            info.update(db.info)
        build = Path(scratch, "decisions")
        write_by_shard(con, build)
        commit(build, str(out_dir))
        rows = con.execute("SELECT reason, count(*) FROM verdict WHERE reason IS NOT NULL GROUP BY reason").fetchall()
        return dict(rows)
    finally:
        con.close()
        shutil.rmtree(scratch, ignore_errors=True)


def write_by_shard(con: duckdb.DuckDBPyConnection, folder: Path) -> int:
    """Stream the decisions, sorted by (raw shard, key), into ``folder/{raw_shard}.parquet``.

    Returns the number of files written.
    """
    folder.mkdir(parents=True, exist_ok=True)
    scores = "".join(f', "{c}"' for c in score_columns(con))
    reader = con.sql(
        f"""SELECT _shard, key, url, caption, reason IS NULL AS keep, reason, stage, dup_of{scores}
            FROM verdict ORDER BY _shard, key"""
    ).fetch_arrow_reader(BATCH_ROWS)
    writer: pq.ParquetWriter | None = None
    current, written = None, 0
    for batch in reader:
        for name, part in _runs(pa.Table.from_batches([batch])):
            if name != current:
                if writer is not None:
                    writer.close()
                writer = pq.ParquetWriter(folder / f"{_file_name(name)}.parquet", part.schema)
                current, written = name, written + 1
            writer.write_table(part)
    if writer is not None:
        writer.close()
    else:  # no rows: one empty file keeps the columns readable
        pq.write_table(reader.schema.remove(0).empty_table(), folder / f"{UNSHARDED}.parquet")
    return written


def score_columns(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The ``score_{reason}`` columns policies added to ``verdict`` (a head policy's scores): decisions keep them."""
    return [row[0] for row in con.sql("DESCRIBE verdict").fetchall() if row[0].startswith("score_")]


def _runs(table: pa.Table) -> list[tuple[str, pa.Table]]:
    """The runs of equal ``_shard`` of a table sorted by it: (shard, rows without ``_shard``)."""
    shards = table.column("_shard").combine_chunks()
    if len(shards) == 0:
        return []
    change = pc.not_equal(shards[1:], shards[:-1]).to_numpy(zero_copy_only=False).nonzero()[0] + 1
    starts = [0, *change.tolist()]
    ends = [*change.tolist(), len(shards)]
    body = table.drop_columns(["_shard"])
    return [(shards[a].as_py(), body.slice(a, b - a)) for a, b in zip(starts, ends, strict=True)]


def _file_name(shard: str) -> str:
    """A raw shard name as a file name; names that could escape the folder are refused."""
    if not shard or "/" in shard or "\\" in shard or shard.startswith("."):
        raise ValueError(f"raw_shard {shard!r} cannot name a decisions file")
    return shard


def commit(build: Path, out_dir: str) -> None:
    """Make local folder ``build`` the decisions folder ``out_dir``: swapped in locally, uploaded and
    committed (:func:`curate.storage.commit_dir`) on object storage."""
    if storage.is_local(out_dir):
        final = Path(storage.local_path(out_dir))
        final.parent.mkdir(parents=True, exist_ok=True)
        staged = final.with_name(f"{final.name}.tmp-{uuid.uuid4().hex[:8]}")  # clean_leftovers knows the pattern
        shutil.move(str(build), staged)
        replace_dir(staged, final)
        return
    staged = f"{out_dir.rstrip('/')}.tmp-{uuid.uuid4().hex[:8]}"
    storage.upload_dir(build, staged)
    storage.commit_dir(staged, out_dir)


def shard_of(path: str) -> str:
    """The raw shard a decisions (or samples, enrich) file is named after: ``.../00042.parquet`` → ``00042``."""
    return storage.name(path).removesuffix(".parquet")


sys.modules[__name__].__class__ = curate.VerbModule  # `curate.decide(run_dir, overrides)` is curate.api.decide
