"""Decide: turn stored signals into keep/reject with a reason, in DuckDB, out of core."""

from __future__ import annotations

import shutil
from pathlib import Path

from curate import storage
from curate.decide.base import DecideDB, Policy
from curate.decide.thresholds import Availability

DECISION_COLUMNS = ("key", "url", "caption", "keep", "reason", "stage", "dup_of")


def decide(
    samples: str | list[str],
    policies: list[Policy],
    out_file: str | Path,
    embeddings_dir: str | Path | None = None,
    info: dict | None = None,
) -> dict[str, int]:
    """Apply ``policies`` (after :class:`Availability`) to ``samples`` (Parquet files or a glob) and
    write the decisions Parquet.

    Returns rejected counts per reason. Every samples row appears once in the output.
    """
    con = storage.duckdb_for(str(out_file))
    try:
        con.read_parquet(samples).create_view("samples")  # a path is data, never SQL text
        con.execute(
            "CREATE TABLE verdict AS SELECT key, NULL::VARCHAR AS reason, "
            "NULL::VARCHAR AS stage, NULL::VARCHAR AS dup_of FROM samples"
        )
        db = DecideDB(con, embeddings_dir)
        for policy in [Availability(), *policies]:
            policy.apply(db)
        if info is not None:
            info.update(db.info)
        scratch = storage.local_tmp() if not storage.is_local(out_file) else None
        final = Path(scratch or storage.local_path(out_file).rsplit("/", 1)[0], storage.name(out_file))
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(final.name + ".tmp")
        con.sql(
            """SELECT v.key, s.url, s.caption, v.reason IS NULL AS keep, v.reason, v.stage,
                      v.dup_of FROM verdict v JOIN samples s USING (key) ORDER BY v.key"""
        ).write_parquet(str(tmp))
        tmp.replace(final)
        if scratch:  # object storage: one PUT of the finished file
            storage.upload(final, str(out_file))
            shutil.rmtree(scratch, ignore_errors=True)
        rows = con.execute("SELECT reason, count(*) FROM verdict WHERE reason IS NOT NULL GROUP BY reason").fetchall()
        return dict(rows)
    finally:
        con.close()
