"""PNG plots of a run (matplotlib, headless Agg backend)."""

from __future__ import annotations

from pathlib import Path

import duckdb


def concept_long_tail(run_dir: str | Path, out: str | Path) -> Path:
    """Log-log rank/count curve of concept counts before and after balancing, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from curate.report.stats import connect

    con = connect(run_dir)
    try:
        before, after = _sorted_counts(con)
    finally:
        con.close()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.loglog(range(1, len(before) + 1), before, label="before balancing")
    ax.loglog(range(1, len(after) + 1), after, label="after balancing")
    ax.set(xlabel="concept rank", ylabel="rows matching the concept", title="Concept long tail")
    ax.legend()
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def _sorted_counts(con: duckdb.DuckDBPyConnection) -> tuple[list[int], list[int]]:
    rows = con.execute(
        """SELECT count(*), count(*) FILTER (WHERE keep) FROM (
               SELECT unnest(s.concept_ids) AS concept, d.keep FROM samples s JOIN decisions d USING (key)
               WHERE d.keep OR d.reason IN ('balanced_out', 'no_concept'))
           GROUP BY concept"""
    ).fetchall()
    return sorted((b for b, _ in rows), reverse=True), sorted((a for _, a in rows if a), reverse=True)
