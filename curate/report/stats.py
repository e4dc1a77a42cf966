"""DuckDB over a run directory: views ``samples``, ``decisions``, ``kept``, the funnel and canned queries.

Canned queries (``CANNED``) take a run directory and return :class:`Rows`, so the CLI, the report
and the notebook print the same numbers; :func:`compare` puts several runs side by side. A query
whose table or columns a run lacks (the step or stage did not run) raises :class:`NotInRun`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from curate import storage
from curate.concepts import load_vocabulary
from curate.errors import UserError
from curate.manifest import Manifest

VIEWS = {"samples": "samples", "decisions": "decisions", "kept": "metadata"}


def connect(run_dir: str | Path, sandbox: bool = True) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with one view per table of the run that exists.

    The views are Arrow datasets over the run's Parquet files, so DuckDB itself opens no file. With
    ``sandbox`` (the default) the connection then has external access off and its configuration
    locked: SQL can read the views and nothing else, and cannot write a file or undo the setting
    (``curate stats --unsafe-sql`` passes ``sandbox=False``).
    """
    con = duckdb.connect()
    for view, folder in VIEWS.items():
        fsys, files = storage.arrow_paths(storage.files(storage.join(run_dir, folder)))
        if files:
            schemas = [pq.read_schema(f, filesystem=fsys) for f in schema_sample(files)]
            schema = pa.unify_schemas(schemas, promote_options="permissive")
            dataset = ds.dataset(files, schema=schema, format="parquet", filesystem=fsys)
            con.register(view, dataset)  # union by name
    if sandbox:
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    return con


SCHEMA_SAMPLE = 8
"""Files whose schemas make a view's schema: a folder has one writer, so its files share columns (a
per-shard folder holds up to 1e5 files; reading every footer would take minutes on object storage)."""


def schema_sample(files: list[str], n: int = SCHEMA_SAMPLE) -> list[str]:
    """At most ``n`` of ``files``, spread evenly, the first and the last included."""
    if len(files) <= n:
        return files
    return [files[round(i * (len(files) - 1) / (n - 1))] for i in range(n)]


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


# --- canned queries ----------------------------------------------------------------------------

STAGE_OF = {
    "width": "image",
    "height": "image",
    "caption_chars": "caption",
    "lang": "language",
    "clip_score": "clip",
    "concept_ids": "concepts",
    "phash": "hashes",
}
"""The annotate stage that writes a column, for messages about what did not run."""

STEP_OF = {"samples": "annotate", "decisions": "decide", "kept": "emit"}


@dataclass
class Rows:
    """A query result: column names, rows, and how many leading columns identify a row (``keys``)."""

    columns: list[str]
    rows: list[tuple]
    keys: int = 1


class NotInRun(UserError, LookupError):
    """The run lacks the table or the columns a query needs: its step or stage did not run."""


@contextmanager
def opened(run_dir: str | Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """:func:`connect`, closed on exit."""
    with closing(connect(run_dir)) as con:
        yield con


def columns(con: duckdb.DuckDBPyConnection, view: str) -> set[str]:
    """Column names of ``view``; empty when the run has no such table."""
    try:
        return {row[0] for row in con.execute(f"DESCRIBE {view}").fetchall()}
    except duckdb.CatalogException:
        return set()


def require(con: duckdb.DuckDBPyConnection, view: str, *needed: str) -> None:
    """Raise :class:`NotInRun` unless ``view`` exists with every column in ``needed``."""
    have = columns(con, view)
    if not have:
        raise NotInRun(f"no {view} table ({STEP_OF[view]} has not run)")
    for column in needed:
        if column not in have:
            raise NotInRun(f"{view} has no {column} column (the {STAGE_OF.get(column, '?')} stage did not run)")


def funnel_rows(run_dir: str | Path) -> Rows:
    """The funnel as rows: input, downloaded, decoded, kept, then ``rejected: REASON`` counts."""
    with opened(run_dir) as con:
        require(con, "samples")
        require(con, "decisions")
    result = funnel(run_dir)
    rows = list(result["steps"].items()) + [(f"rejected: {r}", n) for r, n in result["rejected"].items()]
    return Rows(["funnel", "rows"], rows)


def languages(run_dir: str | Path) -> Rows:
    """Rows per caption language (``(none)`` where no language was detected), and how many were kept."""
    with opened(run_dir) as con:
        require(con, "samples", "lang")
        decided = bool(columns(con, "decisions"))
        join = "LEFT JOIN decisions d USING (key)" if decided else ""
        kept = "count(*) FILTER (WHERE d.keep)" if decided else "NULL"
        rows = con.execute(
            f"""SELECT coalesce(s.lang, '(none)') AS lang, count(*) AS samples, {kept} AS kept
                FROM samples s {join} GROUP BY 1 ORDER BY samples DESC, lang"""
        ).fetchall()
    return Rows(["lang", "samples", "kept"], rows)


def concept_names(manifest: dict) -> list[str] | None:
    """The vocabulary the run's ``concepts`` stage matched (a concept id is an index in it), loaded
    from the file its recorded recipe names; None without such a stage or when the file is gone."""
    stages = [s for s in manifest.get("recipe", {}).get("annotate", []) if s.get("stage") == "concepts"]
    if not stages:
        return None
    try:
        return load_vocabulary(stages[0].get("vocabulary"))
    except (FileNotFoundError, ValueError):
        return None


def _concept_label(concept: int, names: list[str] | None) -> str:
    return names[concept] if names is not None and 0 <= concept < len(names) else f"#{concept}"


def concepts(run_dir: str | Path) -> Rows:
    """Head concepts by name with counts before/after balancing, then the summary rows of
    :func:`concept_summary`. A concept the run's vocabulary cannot name shows as ``#id``."""
    with opened(run_dir) as con:
        require(con, "samples", "concept_ids")
        require(con, "decisions")
    summary = concept_summary(run_dir)
    names = concept_names(Manifest(run_dir).data)
    rows = [(_concept_label(h["concept"], names), h["before"], h["after"]) for h in summary.pop("head")]
    rows += [(name, v["before"], v["after"]) for name, v in summary.items()]
    return Rows(["concept (head) / summary", "before", "after"], rows)


def duplicates(run_dir: str | Path) -> Rows:
    """Duplicate clusters by reason and size (the kept row plus the rows whose ``dup_of`` names it)."""
    with opened(run_dir) as con:
        require(con, "decisions")
        rows = con.execute(
            """SELECT reason, size, count(*) AS clusters FROM (
                   SELECT reason, dup_of, count(*) + 1 AS size FROM decisions
                   WHERE dup_of IS NOT NULL GROUP BY reason, dup_of)
               GROUP BY reason, size ORDER BY reason, size"""
        ).fetchall()
    return Rows(["reason", "cluster size", "clusters"], rows, keys=2)


SCORE_STATS = ("rows scored", "mean", "min", "p10", "p25", "median", "p75", "p90", "max")


def scores(run_dir: str | Path) -> Rows:
    """CLIP score distribution of all scored rows and of kept rows, and the recipe's thresholds."""
    with opened(run_dir) as con:
        require(con, "samples", "clip_score")
        decided = bool(columns(con, "decisions"))
        every = _score_summary(con, "TRUE")
        kept = _score_summary(con, "d.keep") if decided else [None] * len(SCORE_STATS)
        thresholds = clip_thresholds(con, Manifest(run_dir).data) if decided else []
    rows = list(zip(SCORE_STATS, every, kept, strict=True))
    rows += [(label, round(value, 4), None) for value, label in thresholds]
    if decided and (policy(Manifest(run_dir).data, "clip_score") or {}).get("relative"):
        rows.append(("cut on the relative score (stats --heads)", None, None))
    return Rows(["statistic", "all", "kept"], rows)


def _score_summary(con: duckdb.DuckDBPyConnection, where: str) -> list:
    join = "LEFT JOIN decisions d USING (key)" if where != "TRUE" else ""
    n, mean, low, q, high = con.execute(
        f"""SELECT count(*), avg(s.clip_score), min(s.clip_score),
                   quantile_cont(s.clip_score, [0.1, 0.25, 0.5, 0.75, 0.9]), max(s.clip_score)
            FROM samples s {join} WHERE s.clip_score IS NOT NULL AND {where}"""
    ).fetchone()
    values = [mean, low, *(q or [None] * 5), high]
    return [n, *(None if v is None else round(float(v), 4) for v in values)]


def score_cuts(manifest: dict, con: duckdb.DuckDBPyConnection | None = None) -> list[dict]:
    """The recipe's learned-score cuts: each ``head`` and ``score`` policy's reason, SQL expression and cut lines,
    and the relative CLIP score's when ``clip_score`` has ``relative: true`` (its keep_top line needs ``con``)."""
    found = []
    clip = policy(manifest, "clip_score")
    if clip is not None and clip.get("relative"):
        found.append(_relative_clip_cut(clip, con))
    for entry in manifest.get("recipe", {}).get("decide", []):
        if entry.get("policy") not in ("head", "score"):
            continue
        reason = entry["reason"]
        expr = f'd."score_{reason}"' if entry["policy"] == "head" else f's."{entry["column"]}"'
        lines = [(float(entry[k]), f"{k} {entry[k]}") for k in ("min_score", "max_score") if entry.get(k) is not None]
        found.append({"reason": reason, "expr": expr, "lines": lines, "policy": entry["policy"]})
    return found


def _relative_clip_cut(entry: dict, con: duckdb.DuckDBPyConnection | None) -> dict:
    expr, reason = 'd."score_clip_relative"', "low_clip_score"
    lines = (
        [(float(entry["min_score"]), f"min_score {entry['min_score']}")] if entry.get("min_score") is not None else []
    )
    if entry.get("keep_top") is not None and con is not None and "score_clip_relative" in columns(con, "decisions"):
        (cut,) = con.execute(
            f"SELECT max({expr}) FROM decisions d WHERE d.reason = $reason AND {expr} IS NOT NULL", {"reason": reason}
        ).fetchone()
        if cut is not None:
            lines.append((float(cut), f"keep_top {entry['keep_top']}: highest rejected score"))
    return {"reason": reason, "expr": expr, "lines": lines, "policy": "clip_score", "label": "relative CLIP score"}


def heads(run_dir: str | Path) -> Rows:
    """Per learned score (``head`` and ``score`` policies, the relative CLIP score): rows scored, quantiles, the
    cut, rows it rejected."""
    with opened(run_dir) as con:
        cuts = score_cuts(Manifest(run_dir).data, con)
        if not cuts or not columns(con, "decisions"):
            raise NotInRun("no head, score or relative clip_score policy in this run's recipe (README: learned heads)")
        rows = []
        for cut in cuts:
            n, q, rejected = con.execute(
                f"""SELECT count({cut["expr"]}), quantile_cont({cut["expr"]}, [0.1, 0.5, 0.9]),
                           count(*) FILTER (WHERE d.reason = $reason)
                    FROM samples s JOIN decisions d USING (key)""",
                {"reason": cut["reason"]},
            ).fetchone()
            q = [None if v is None else round(float(v), 4) for v in (q or [None] * 3)]
            rows.append((cut["reason"], cut["policy"], n, *q, "; ".join(label for _, label in cut["lines"]), rejected))
    return Rows(["reason", "policy", "scored", "p10", "median", "p90", "cut", "rejected"], rows)


CANNED: dict[str, Callable[[str | Path], Rows]] = {
    "funnel": funnel_rows,
    "languages": languages,
    "concepts": concepts,
    "duplicates": duplicates,
    "scores": scores,
    "heads": heads,
}
"""The canned queries by name: ``curate stats RUN --NAME``."""


def compare(run_dirs: Sequence[str | Path], query: Callable[[str | Path], Rows]) -> tuple[Rows, list[str]]:
    """Run ``query`` on each run and join the results on their key columns, one column per run.

    Returns the joined rows and a note for each run the query could not run on (its columns stay empty).
    """
    labels = run_labels(run_dirs)
    results: dict[str, Rows] = {}
    notes = []
    for label, run_dir in zip(labels, run_dirs, strict=True):
        try:
            results[label] = query(run_dir)
        except NotInRun as err:
            notes.append(f"{run_dir}: {err}")
    if not results:
        raise NotInRun("; ".join(notes))
    return side_by_side(results, labels), notes


def side_by_side(results: dict[str, Rows], labels: list[str]) -> Rows:
    """Join per-run results on their key columns; value columns are named by run (``run: column``)."""
    first = next(iter(results.values()))
    keys, values = first.columns[: first.keys], first.columns[first.keys :]
    merged: dict[tuple, dict[str, tuple]] = {}
    for label, result in results.items():
        for row in result.rows:
            merged.setdefault(tuple(row[: first.keys]), {})[label] = tuple(row[first.keys :])
    names = [label if len(values) == 1 else f"{label}: {v}" for label in labels for v in values]
    empty = (None,) * len(values)
    rows = [key + sum((by_run.get(label, empty) for label in labels), ()) for key, by_run in merged.items()]
    return Rows(keys + names, rows, keys=first.keys)


def run_labels(run_dirs: Sequence[str | Path]) -> list[str]:
    """Short names for runs: folder names, or full paths where two folders share a name."""
    names = [Path(r).name for r in run_dirs]
    return names if len(set(names)) == len(names) else [str(r) for r in run_dirs]


# --- data for the report's plots and grids -----------------------------------------------------

MAX_POINTS = 1_000_000
"""Histograms read a repeatable sample of at most this many values."""


def policy(manifest: dict, name: str) -> dict | None:
    """The resolved recipe entry of decide policy ``name``, or None when the recipe has none."""
    for entry in manifest.get("recipe", {}).get("decide", []):
        if entry.get("policy") == name:
            return entry
    return None


def clip_thresholds(con: duckdb.DuckDBPyConnection, manifest: dict) -> list[tuple[float, str]]:
    """The clip_score policy's cut-offs: ``min_score``, and for ``keep_top`` the highest rejected score.

    None with ``relative: true``: those cuts are on the relative score (:func:`score_cuts`), not this one."""
    entry = policy(manifest, "clip_score")
    if entry is None or entry.get("relative"):
        return []
    found = []
    if entry.get("min_score") is not None:
        found.append((float(entry["min_score"]), f"min_score {entry['min_score']}"))
    if entry.get("keep_top") is not None:
        (cut,) = con.execute(
            """SELECT max(s.clip_score) FROM decisions d JOIN samples s USING (key)
               WHERE d.stage = 'clip_score' AND s.clip_score IS NOT NULL"""
        ).fetchone()
        if cut is not None:
            found.append((float(cut), f"keep_top {entry['keep_top']}: highest rejected score"))
    return found


def values_by_outcome(con: duckdb.DuckDBPyConnection, expr: str, reasons: Sequence[str] = ()) -> dict[str, list[float]]:
    """Non-null values of SQL ``expr`` over ``samples s``: ``all``, or when decided ``kept`` and ``rejected``.

    With ``reasons``, rejected rows split into ``rejected: R1, R2`` (those reasons) and
    ``rejected (other reasons)``, to show what a threshold cut against what other rules did.
    """
    decided = bool(columns(con, "decisions"))
    if decided and reasons:
        found = {r for (r,) in con.execute("SELECT DISTINCT reason FROM decisions WHERE NOT keep").fetchall()}
        reasons = [r for r in reasons if r in found]
    if not decided:
        names, outcome = ["all"], "'all'"
    elif reasons:
        names = ["kept", f"rejected: {', '.join(reasons)}", "rejected (other reasons)"]
        outcome = f"CASE WHEN d.keep THEN '{names[0]}' WHEN list_contains($reasons, d.reason) THEN $named ELSE '{names[2]}' END"
    else:
        names, outcome = ["kept", "rejected"], "CASE WHEN d.keep THEN 'kept' ELSE 'rejected' END"
    join = "LEFT JOIN decisions d USING (key)" if decided else ""
    params = {"reasons": list(reasons), "named": names[1]} if decided and reasons else {}
    rows = con.execute(
        f"""SELECT * FROM (SELECT {expr} AS v, {outcome} AS outcome FROM samples s {join} WHERE {expr} IS NOT NULL)
            USING SAMPLE reservoir({MAX_POINTS} ROWS) REPEATABLE (0)""",
        params,
    ).fetchall()
    groups: dict[str, list[float]] = {name: [] for name in names}
    for value, name in rows:
        groups[name].append(float(value))
    return groups


def rejections_by_stage(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str, int]]:
    """(decide stage, reason, rows) of every rejection."""
    return con.execute(
        """SELECT coalesce(stage, '?'), reason, count(*) AS n FROM decisions WHERE NOT keep
           GROUP BY ALL ORDER BY n DESC, reason"""
    ).fetchall()


GRID_COLUMNS = (
    "width",
    "height",
    "clip_score",
    "error_message",
    "decode_error",
    "raw_shard",
    "image_offset",
    "image_size",
)


def grid_rows(con: duckdb.DuckDBPyConnection, kept: bool, limit: int) -> list[dict]:
    """A repeatable sample of kept rows (``limit``), or of rejected rows (``limit`` per reason, most common first).

    Each row: key, url, caption, reason, dup_of and the :data:`GRID_COLUMNS` (None where absent).
    """
    have = columns(con, "samples")
    optional = ", ".join(f's."{c}"' if c in have else f"NULL AS {c}" for c in GRID_COLUMNS)
    where = "keep" if kept else "NOT keep"
    result = con.execute(  # top-n aggregate per reason: no sort of the whole table
        f"""WITH picked AS (
                SELECT reason, count(*) AS reason_rows, min_by(key, md5(key), {int(limit)}) AS keys
                FROM decisions WHERE {where} GROUP BY reason),
            k AS (SELECT reason_rows, unnest(keys) AS key, generate_subscripts(keys, 1) AS pick FROM picked)
            SELECT s.key, s.url, s.caption, d.reason, d.dup_of, {optional}
            FROM k JOIN decisions d USING (key) JOIN samples s USING (key)
            ORDER BY k.reason_rows DESC, d.reason, k.pick"""
    )
    names = [c[0] for c in result.description]
    return [dict(zip(names, row, strict=True)) for row in result.fetchall()]
