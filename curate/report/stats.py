"""DuckDB over a run directory: views ``samples``, ``decisions``, ``kept`` and the funnel query."""

from __future__ import annotations

import math
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


def concept_summary(run_dir: str | Path, top: int = 15, rare: int = 10) -> dict:
    """Concept counts before balancing (rows that reached it) and after (kept rows).

    Returns the ``top`` head concepts with both counts, the number of distinct concepts, the
    entropy (bits) of the concept distribution, and how many concepts have at most ``rare`` rows.
    """
    con = connect(run_dir)
    try:
        counts = con.execute(
            """WITH reached AS (
                   SELECT s.concept_ids, d.keep FROM samples s JOIN decisions d USING (key)
                   WHERE d.keep OR d.reason IN ('balanced_out', 'no_concept'))
               SELECT concept, count(*) AS before, count(*) FILTER (WHERE keep) AS after
               FROM (SELECT unnest(concept_ids) AS concept, keep FROM reached)
               GROUP BY concept ORDER BY before DESC, concept"""
        ).fetchall()
    finally:
        con.close()
    before = [b for _, b, _ in counts]
    after = [a for _, _, a in counts if a]
    return {
        "head": [{"concept": c, "before": b, "after": a} for c, b, a in counts[:top]],
        "concepts": {"before": len(before), "after": len(after)},
        "entropy_bits": {"before": _entropy(before), "after": _entropy(after)},
        f"concepts_with_at_most_{rare}_rows": {
            "before": sum(1 for b in before if b <= rare),
            "after": sum(1 for a in after if a <= rare),
        },
    }


def _entropy(counts: list[int]) -> float:
    total = sum(counts)
    return -sum(c / total * math.log2(c / total) for c in counts if c) if total else 0.0
