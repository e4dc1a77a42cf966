"""DuckDB over a run directory: views ``samples``, ``decisions``, ``kept`` and the funnel query."""

from __future__ import annotations

from pathlib import Path

import duckdb

VIEWS = {"samples": "samples", "decisions": "decisions", "kept": "metadata"}


def connect(run_dir: str | Path) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with one view per table of the run that exists."""
    con = duckdb.connect()
    for view, folder in VIEWS.items():
        files = sorted(Path(run_dir, folder).glob("*.parquet"))
        if files:
            paths = ", ".join(f"'{p}'" for p in files)
            con.execute(f"CREATE VIEW {view} AS SELECT * FROM read_parquet([{paths}], union_by_name=true)")
    return con


def funnel(run_dir: str | Path) -> dict:
    """Input → downloaded → decoded → kept, and rejected counts per reason."""
    con = connect(run_dir)
    try:
        row = con.execute(
            """SELECT count(*),
                      count(*) FILTER (WHERE s.status IN ('success', 'failed_to_resize')),
                      count(*) FILTER (WHERE s.width IS NOT NULL AND s.decode_error IS NULL),
                      count(*) FILTER (WHERE d.keep)
               FROM decisions d JOIN samples s USING (key)"""
        ).fetchone()
        reasons = con.execute(
            "SELECT reason, count(*) AS n FROM decisions WHERE NOT keep GROUP BY reason ORDER BY n DESC, reason"
        ).fetchall()
    finally:
        con.close()
    steps = dict(zip(("input", "downloaded", "decoded", "kept"), row, strict=True))
    return {"steps": steps, "rejected": dict(reasons)}
